"""Training-framework callbacks around ``reludoctor.watch`` (optional extras: each module
imports its framework, with an ImportError naming the extra when it is missing)."""


def require(module: str, extra: str) -> None:
    """Import ``module`` or fail with the pip command that installs it."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed: pip install 'reludoctor[{extra}]'") from exc

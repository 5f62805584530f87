"""Findings' suggestions for ONNX models: ONNX node and initializer names, what to change in the training code, and which ``reludoctor fix`` strategy patches the file."""

from __future__ import annotations

from reludoctor.core.rules import Context, preview
from reludoctor.report.model import Finding

ONNX_HE = "Kaiming-normal init (fan_in, ReLU gain; He et al. 2015)"


ONNX_LEAKY = "LeakyReLU(0.01)"


def _onnx_parts(site_name: str | None, context: Context) -> tuple[str, str]:
    """(the activation, the layer feeding it) named as ONNX nodes and initializers."""
    act = f"the activation exported as ONNX node {site_name}" if site_name else "the activations"
    site = next((s for s in context.sites if s.name == site_name), None)
    producer = context.producer(site) if site is not None else None
    if producer is None:
        return act, "the layer feeding it"
    layer = f"the layer exported as ONNX node {producer.layer} (weight initializer {producer.weight}"
    if producer.norm_layer:
        layer += f", then BatchNormalization node {producer.norm_layer}"
    return act, layer + ")"


def onnx_suggestion(finding: Finding, context: Context) -> Finding:
    """The finding's suggestion for an ONNX model: no PyTorch code on ONNX names
    (``torch.nn.init.kaiming_normal_(/m/fc1/Gemm.weight)`` is nothing anyone can run). It names
    the ONNX node and initializer, says what to change in the training code (which an ONNX file
    comes from), and which ``reludoctor fix`` strategy patches this file."""
    from dataclasses import replace

    act, layer = _onnx_parts(finding.site, context)
    evidence = finding.evidence
    listed = (evidence.get(key) for key in ("units", "dead_units", "dormant_units", "saturated_units"))
    units = preview(next((v for v in listed if isinstance(v, (list, tuple)) and v), ()))
    retrain = "in the training code"
    text = {
        "dead-units": (f"{retrain}, use {ONNX_LEAKY} for {act} so dead units keep a gradient (Maas et "
                       f"al. 2013), or re-initialise their weight rows in {layer} with {ONNX_HE}; to "
                       f"patch this file: reludoctor fix --leaky 0.01 or --reinit; dead units: {units}"),
        "dead-site": (f"check {layer}: a strongly negative bias or collapsed weights; {retrain}, "
                      f"re-initialise it with {ONNX_HE} and use {ONNX_LEAKY} for {act} before retraining"),
        "negative-bias": (f"{retrain}, reset the bias" + (" (BatchNorm beta, and gamma to 1)"
                                                          if "BatchNormalization" in layer else "")
                          + f" of units {units} of {layer} to 0 and re-initialise their weight rows "
                          f"with {ONNX_HE}; train with a lower learning rate (a too large step drives "
                          f"biases negative: Lu et al. 2019), or use {ONNX_LEAKY} for {act}; "
                          "reludoctor fix --reinit does the re-initialisation on this file"),
        "input-never-positive": (f"train with a lower learning rate (or a warm-up, or gradient "
                                 "clipping): one too large step leaves a unit dead for good (dying "
                                 f"ReLU, Lu et al. 2019); {retrain}, re-initialise rows {units} of the "
                                 f"weight of {layer} with {ONNX_HE}, or use {ONNX_LEAKY} for {act} so "
                                 "they can recover"),
        "collapsed-weights": (f"{retrain}, re-initialise rows {units} of the weight of {layer} with "
                              f"{ONNX_HE}, and review the weight decay on that layer (too strong for "
                              "the learning rate, it shrinks rows that get no gradient to zero)"),
        "prunable-units": (f"prune units {units} at {finding.site}: reludoctor fix --prune-dead "
                           f"removes them from this file (their rows in {layer} and the matching "
                           "inputs of the layers that consume them); or remove them from the layer "
                           f"{retrain}"),
        "dormant-units": (f"ReDo (Sokar et al. 2023): {retrain}, re-initialise the weight rows "
                          f"{units} of {layer} with {ONNX_HE} and zero the outgoing weights of those "
                          "units; reludoctor fix --reinit does it on this file"),
        "saturated-units": (f"{retrain}, use an unbounded ReLU for {act}, or lower the scale of "
                            f"{layer} (re-initialise it, or normalise its input)"),
        "dead-with-depth": (f"{retrain}, initialise every Conv/Linear with {ONNX_HE}, add residual "
                            f"connections around the deep layers, and normalise before each "
                            f"activation (BatchNorm / LayerNorm); the dead ratio rises towards "
                            f"{finding.site}"),
        "vanishing-gradient": (f"{retrain}, initialise every Conv/Linear with {ONNX_HE}, add "
                               "residual connections, and normalise before each activation "
                               "(BatchNorm / LayerNorm)"),
    }.get(finding.rule)
    return finding if text is None else replace(finding, suggestion=text)

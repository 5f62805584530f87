"""Fuzzing harness for reludoctor's loaders (see docs/fuzzing.md).

``tests.fuzz.harness`` builds seeded cases (mutations of valid files and crafted attacks), runs
each one as a bounded subprocess and classifies the outcome; ``benchmarks/fuzz.py`` is the full
run and ``tests/fuzz/test_fuzz_sample.py`` a small seeded sample.
"""

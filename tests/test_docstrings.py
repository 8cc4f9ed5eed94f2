"""Public estimators: every parameter described (numpydoc), Examples run as doctests."""

import doctest
import inspect
import re

import pytest

import unfolded_sbl as us

ESTIMATORS = [us.ClassicalCB, us.SLORETA, us.UnfoldedSBLRegressor, us.OnnxSBLRegressor,
              us.EndToEndRegressor]


def _sections(doc):
    """{section title: its lines} of a numpydoc docstring (dedented)."""
    lines = inspect.cleandoc(doc).splitlines()
    sections, current = {}, None
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()):
            current = line.strip()
            sections[current] = []
        elif current and not re.fullmatch(r"-{3,}", line.strip()):
            sections[current].append(line)
    return sections


def _described_parameters(lines):
    """Names of parameter entries followed by an indented description."""
    described = set()
    for i, line in enumerate(lines):
        match = re.match(r"^(\w+(?:, \w+)*) :", line)
        if match and i + 1 < len(lines) and lines[i + 1].startswith("    ") and (
                lines[i + 1].strip()):
            described.update(name.strip() for name in match.group(1).split(","))
    return described


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_every_parameter_has_a_description(cls):
    sections = _sections(cls.__doc__)
    described = _described_parameters(sections["Parameters"])
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    missing = [p for p in params if p not in described]
    assert not missing, f"{cls.__name__}: parameters without a description: {missing}"
    assert "Examples" in sections, f"{cls.__name__} has no Examples section"


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_examples_run(cls):
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(cls, cls.__name__, globs={"us": us})
    assert tests and tests[0].examples, f"{cls.__name__} has no doctest examples"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{cls.__name__}: {result.failed} doctest example(s) failed"


@pytest.mark.parametrize("obj", [us.export_onnx, us.skl2onnx_support],
                         ids=["export_onnx", "skl2onnx_support"])
def test_deployment_examples_run(obj):
    """The Examples of export_onnx and of the skl2onnx converters run as written."""
    pytest.importorskip("skl2onnx")
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(obj, globs={"us": us}) if t.examples]
    assert tests, f"{obj.__name__} has no doctest examples"
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0

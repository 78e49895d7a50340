"""Property-based: arbitrary values of the declared types for every config key and every CLI option of every
command end in exit 0 or 2, with at most one stderr line, never a traceback and never a signal (with --verbose,
which by design lets library output and tracebacks through, the error is still the last line).

Every key comes from the dataclasses of pipeline/core/config.py and every option from pipeline.cli.parser(), so
a key or an option added later is fuzzed too. Each example calls `pipeline.cli.main` in-process, in an empty
working folder, with inputs that make any run that passes the checks stop at a cheap exit-2 point (a checkpoint,
teacher or artifact folder that does not exist): values are judged, no real work starts. `arm64-setup` (no
option but --verbose) provisions an emulation environment, so it is the one command not run here.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import os
import tempfile
import types
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import cli
from pipeline.core import config as config_module

MISSING = "no_such_folder"  # relative to the empty working folder: never there
SKIPPED_COMMANDS = {"arm64-setup"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An empty working folder (relative paths land here) and a private temp dir (the commands' temp logs)."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "cwd").mkdir()
    (root / "tmp").mkdir()
    previous_cwd, previous_tmp = os.getcwd(), tempfile.tempdir
    os.chdir(root / "cwd")
    tempfile.tempdir = str(root / "tmp")
    try:
        yield root
    finally:
        os.chdir(previous_cwd)
        tempfile.tempdir = previous_tmp


def call(argv: list[str]) -> tuple[int, str, str]:
    """`python -m pipeline ARGV` in-process: (exit code, stdout, stderr); argparse's exits are exit codes too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as stop:  # --help (0) and usage errors (2) leave through argparse
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    return code, out.getvalue(), err.getvalue()


def assert_contract(argv: list[str], code: int, out: str, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (0, 2), (argv, code, err[-2000:])
    if "-v" in argv or "--verbose" in argv:
        # --verbose redirects nothing by design (pipeline/core/console.py): library output and the traceback of
        # an OS error reach the terminal; the error is still the last line
        assert code == 0 or (lines and lines[-1].startswith("error: ")), (argv, err[-2000:])
        return
    assert "Traceback" not in err and "Traceback" not in out, (argv, err[-2000:], out[-2000:])
    assert len(lines) <= 1, (argv, err[-2000:])


# ---------------------------------------------------------------------------------------------- values

# text an argv can hold (no NUL), including option-looking, empty, huge and non-ASCII strings
TEXT = st.one_of(st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=30),
                 st.sampled_from(["", " ", "-1", "--", "-", "nan", "inf", "-inf", "1e400", "0x10", "1_000", "٣",
                                  "none", "a,b", "1,,2", ",", "x" * 300, "é" * 200, "../x", "a/" * 100]))
INTS = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 2, 255, 256, 8192, 8193, 2**31, 2**63 - 1]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0, 1.5, -1e-300]))
# a path that stays inside the empty working folder and does not exist there ("." is the folder itself; never "",
# which means "the default" to --model and --teacher: a real run)
PATHS = st.one_of(st.sampled_from([".", MISSING, "x" * 300, f"{MISSING}/{'y' * 300}", "a/" * 300 + "b",
                                   f"{MISSING}/a b/é"]),
                  st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_. "), min_size=1,
                          max_size=40).filter(lambda s: s.strip(". ") and not s.startswith("-")).map(lambda s: f"{MISSING}_{s}"))


def number_text(kind: type) -> st.SearchStrategy[str]:
    """Mostly numbers (so that runs get past argparse to the range checks), sometimes any text."""
    numbers = (INTS if kind is int else FLOATS).map(str)
    return st.one_of(numbers, numbers, numbers, TEXT)


# ---------------------------------------------------------------------------------------------- CLI options

# options whose value names something that must not exist (the run stops there) or a place that is written to
ANCHORS = {"build": {"--model", "--out", "--config", "--calibration-data", "--eval-data"},
           "validate": {"--artifacts", "--model", "--eval-data", "--thresholds", "--calibration-data", "--report-dir"},
           "compress": {"--teacher", "--out", "--config", "--train-data", "--eval-data"},
           "bench": {"--artifacts", "--out", "--compare", "--static"}}
# every run needs these for the cheap stop (argparse takes the last of a repeated option: they come first)
REQUIRED = {"build": ["--model", MISSING], "validate": ["--artifacts", MISSING], "compress": ["--teacher", MISSING,
            "--out", MISSING], "bench": ["--artifacts", MISSING]}


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name not in SKIPPED_COMMANDS}


def option_value(command: str, action: argparse.Action) -> st.SearchStrategy[list[str]]:
    flag = action.option_strings[-1]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return st.just([flag])
    if isinstance(action, argparse._HelpAction):
        return st.just([flag])
    if flag in ANCHORS.get(command, ()):
        values = PATHS
    elif action.choices:
        values = st.one_of(st.sampled_from(list(action.choices)), st.sampled_from(list(action.choices)), TEXT)
    elif action.type in (int, float):
        values = number_text(action.type)
    elif flag in ("--threads", "--max-length", "--lengths", "--cost-lengths"):  # comma lists of integers
        values = st.lists(INTS.map(str), min_size=0, max_size=4).map(",".join) | TEXT
    else:
        values = TEXT
    return values.map(lambda v: [f"{flag}={v}"] if v.startswith("-") else [flag, v])


@st.composite
def command_lines(draw) -> list[str]:
    parsers = commands()
    name = draw(st.sampled_from(sorted(parsers)))
    actions = [a for a in parsers[name]._actions if a.option_strings]
    # --help rarely: it ends every run before the values are judged
    chosen = draw(st.lists(st.sampled_from(actions), max_size=6, unique_by=id)
                  .filter(lambda c: not any(isinstance(a, argparse._HelpAction) for a in c) or len(c) == 1))
    argv = [name, *REQUIRED[name]]
    for action in chosen:
        argv += draw(option_value(name, action))
    return argv


def test_every_command_has_its_options_fuzzed():
    """Nothing escapes the fuzzing below by being added without a strategy: every option has one."""
    for name, p in commands().items():
        for action in p._actions:
            if action.option_strings:
                option_value(name, action)  # raises for an action kind it does not know
    assert set(commands()) == {"build", "validate", "compress", "bench"}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=command_lines())
def test_any_command_line_is_exit_0_or_2_with_at_most_one_line(workdir, argv):
    assert_contract(argv, *call(argv))


# ---------------------------------------------------------------------------------------------- config keys


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):  # a TOML basic string: quote, backslash and control characters escaped
        return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c
                             for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


SCALARS = st.one_of(st.booleans(), INTS.filter(lambda i: -2**63 <= i < 2**63), FLOATS, TEXT)
ANY_VALUE = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.sampled_from(["a", "b"]), SCALARS,
                                                                              max_size=2))


def typed(hint) -> st.SearchStrategy:
    """Values of the declared type, with their edges (NaN, infinities, huge, negative, empty), or of any type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(typed(a) for a in args if a is not type(None)))
    if origin is list:
        return st.lists(typed(args[0]), max_size=4)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return INTS.filter(lambda i: -2**63 <= i < 2**63)  # TOML's integers are 64-bit
    if hint is float:
        return FLOATS | INTS.filter(lambda i: -2**63 <= i < 2**63)
    if hint is str:
        return TEXT
    raise TypeError(f"no strategy for {hint}")


SECTIONS = {"build": config_module.BuildConfig, "quantize": config_module.QuantizeConfig,
            "tflite": config_module.TFLiteConfig, "compress": config_module.CompressConfig}
THRESHOLD_TABLES = [*config_module.DEFAULT_THRESHOLDS, 'artifacts."albert.int8.pte"']


def keys() -> list[tuple[str, str, typing.Any]]:
    """(section, key, annotation) for every setting a config file can hold."""
    found = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        found += [(section, f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    hints = typing.get_type_hints(config_module.Thresholds)
    for table in THRESHOLD_TABLES:
        found += [(f"thresholds.{table}", f.name, hints[f.name]) for f in dataclasses.fields(config_module.Thresholds)]
    hints = typing.get_type_hints(config_module.CostThresholds)
    found += [("thresholds.cost", f.name, hints[f.name]) for f in dataclasses.fields(config_module.CostThresholds)]
    return found


@st.composite
def config_files(draw) -> tuple[str, str]:
    """(command, TOML text): a few keys of one section with values of their type (or, rarely, of any type)."""
    every = keys()
    section = draw(st.sampled_from(sorted({s for s, _, _ in every})))
    chosen = draw(st.lists(st.sampled_from([k for k in every if k[0] == section]), min_size=1, max_size=4,
                           unique_by=lambda k: k[1]))
    lines = [f"[{section}]"]
    for _, key, hint in chosen:
        value = draw(st.one_of(typed(hint), typed(hint), typed(hint), ANY_VALUE))
        lines.append(f"{key} = {toml_value(value)}")
    command = "compress" if section == "compress" else ("validate" if section.startswith("thresholds") and draw(
        st.booleans()) else "build")
    return command, "\n".join(lines) + "\n"


def test_every_config_key_has_a_strategy():
    for _, key, hint in keys():
        typed(hint)  # raises for an annotation it does not know
    assert {s for s, _, _ in keys()} >= {"build", "quantize", "tflite", "compress", "thresholds.int8"}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=config_files())
def test_any_config_file_is_exit_2_with_one_line(workdir, case):
    command, text = case
    path = workdir / "cwd" / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    argv = {"build": ["build", "--config", str(path), "--model", MISSING, "--out", "out"],
            "compress": ["compress", "--config", str(path), "--teacher", MISSING, "--out", "out"],
            "validate": ["validate", "--thresholds", str(path), "--artifacts", MISSING]}[command]
    code, out, err = call(argv)
    assert_contract(argv + [text], code, out, err)
    assert code == 2, (text, err)  # nothing here exists to run

"""Every Swift source of the iOS demo parses with tree-sitter-swift: no ERROR and no MISSING nodes.

There is no Swift compiler on Linux CI; this is the syntax check available here (types and the ExecuTorch /
LiteRT / swift-transformers APIs are only checked by Xcode).
"""
from __future__ import annotations

import pytest
import tree_sitter_swift
from tree_sitter import Language, Parser

from apps_support import IOS_DEMO

SWIFT_FILES = sorted(IOS_DEMO.rglob("*.swift"))


def syntax_problems(source: bytes) -> list[str]:
    parser = Parser(Language(tree_sitter_swift.language()))
    tree = parser.parse(source)
    problems = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            kind = f"MISSING {node.type}" if node.is_missing else "ERROR"
            snippet = source[node.start_byte : node.end_byte][:60].decode("utf-8", "replace")
            problems.append(f"line {line + 1}, column {column + 1}: {kind} {snippet!r}")
        stack.extend(node.children)
    return problems


def test_there_are_swift_sources():
    names = {p.name for p in SWIFT_FILES}
    assert {"ManifestKeys.swift", "ContentView.swift", "AlbertDemoApp.swift"} <= names, names


@pytest.mark.parametrize("path", SWIFT_FILES, ids=[p.name for p in SWIFT_FILES])
def test_swift_file_parses(path):
    problems = syntax_problems(path.read_bytes())
    assert not problems, f"{path.relative_to(IOS_DEMO)}:\n" + "\n".join(problems)


def test_checker_flags_broken_swift():
    """The check itself works: a broken file is reported."""
    assert syntax_problems(b"struct A { func f( { let x = }")
    assert not syntax_problems(b"struct A { func f() -> Int { let x = 1; return x } }")

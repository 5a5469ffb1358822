"""The committed contracts: generated code is current, every element is documented, buf style holds."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT

PROTOS = ROOT / "protos"
PROTO_FILES = sorted((PROTOS / "vlm" / "v1").glob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _committed_outputs() -> list[Path]:
    return sorted(p for p in (PROTOS / "vlm" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def test_there_are_contracts() -> None:
    names = {p.stem for p in PROTO_FILES}
    assert {"common", "vision", "llm", "gateway"} <= names
    assert len(_committed_outputs()) == 3 * len(PROTO_FILES)


def test_regenerated_code_equals_committed(tmp_path: Path) -> None:
    """Running the one codegen command gives byte-identical files: nothing is stale or hand-edited."""
    result = subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh = sorted((tmp_path / "vlm" / "v1").iterdir())
    assert [p.name for p in fresh] == [p.name for p in _committed_outputs()]
    stale = [p.name for p in fresh if p.read_bytes() != (PROTOS / "vlm" / "v1" / p.name).read_bytes()]
    assert not stale, f"regenerate with `python protos/generate.py`; stale: {stale}"


@pytest.mark.parametrize("name", [p.stem for p in PROTO_FILES])
def test_generated_modules_use_absolute_imports(name: str) -> None:
    for suffix in GENERATED_SUFFIXES:
        text = (PROTOS / "vlm" / "v1" / f"{name}{suffix}").read_text()
        relative = re.findall(r"^(?:import \w+_pb2|from \. import)", text, flags=re.MULTILINE)
        assert not relative, f"{name}{suffix} has relative imports {relative}"
    module = importlib.import_module(f"vlm.v1.{name}_pb2")
    assert module.DESCRIPTOR.package == "vlm.v1"
    importlib.import_module(f"vlm.v1.{name}_pb2_grpc")


def test_generated_code_imports_in_a_clean_interpreter() -> None:
    """Only ``protos/`` on the path: ``import vlm.v1.gateway_pb2`` resolves its dependencies."""
    code = "import vlm.v1.gateway_pb2_grpc, vlm.v1.vision_pb2_grpc, vlm.v1.llm_pb2_grpc; print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(PROTOS), "PATH": "/usr/bin:/bin"},
        cwd="/",
    )
    assert result.stdout.strip() == "ok", result.stderr


# --- a small .proto reader: enough to check the style rules on our own files -------------------


@dataclass(frozen=True)
class Element:
    """One declaration of a .proto file and whether a comment sits right above it."""

    file: str
    line: int
    kind: str  # service | rpc | message | enum | value | field | oneof
    name: str
    scope: str  # enclosing block kind
    scope_name: str
    commented: bool
    text: str


_BLOCK = re.compile(r"^(service|message|enum|oneof)\s+(\w+)\s*\{")
_RPC = re.compile(r"^rpc\s+(\w+)\s*\(")
_VALUE = re.compile(r"^(\w+)\s*=\s*(-?\d+)\s*;")
_FIELD = re.compile(r"^(?:repeated\s+|optional\s+)?(?:map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*\d+\s*;")


def parse_proto(path: Path) -> list[Element]:
    """Declarations of ``path`` in order, with their enclosing block."""
    elements: list[Element] = []
    stack: list[tuple[str, str]] = [("file", path.name)]
    previous = ""
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        commented = previous.startswith("//")
        scope, scope_name = stack[-1]
        found = _classify(line, scope)
        if found is not None:
            kind, name = found
            elements.append(Element(path.name, number, kind, name, scope, scope_name, commented, line))
            if kind in {"service", "message", "enum", "oneof"} and not line.endswith("}"):
                stack.append((kind, name))
        elif line.startswith("}") and len(stack) > 1:
            stack.pop()
        previous = line
    return elements


def _classify(line: str, scope: str) -> tuple[str, str] | None:
    if match := _BLOCK.match(line):
        return match.group(1), match.group(2)
    if match := _RPC.match(line):
        return "rpc", match.group(1)
    if scope == "enum" and (match := _VALUE.match(line)):
        return "value", match.group(1)
    if scope in {"message", "oneof"} and (match := _FIELD.match(line)):
        return "field", match.group(1)
    return None


ELEMENTS = [e for path in PROTO_FILES for e in parse_proto(path)]


def test_reader_finds_declarations() -> None:
    kinds = {e.kind for e in ELEMENTS}
    assert kinds == {"service", "rpc", "message", "enum", "value", "field", "oneof"}
    fields = {(e.scope_name, e.name) for e in ELEMENTS if e.kind == "field"}
    assert ("EmbeddingRecord", "data") in fields
    assert ("source", "url") in fields  # inside ImageSource's oneof


def test_every_declaration_has_a_comment_above_it() -> None:
    missing = [f"{e.file}:{e.line} {e.kind} {e.name}" for e in ELEMENTS if not e.commented]
    assert not missing, "undocumented: " + ", ".join(missing)


def test_enum_values_follow_buf_standard() -> None:
    problems = []
    for enum in (e for e in ELEMENTS if e.kind == "enum"):
        values = [e for e in ELEMENTS if e.kind == "value" and e.scope_name == enum.name]
        # buf wants UPPER_SNAKE of the name (DType -> D_TYPE_); the plain upper-cased name is accepted too.
        prefixes = {_upper_snake(enum.name) + "_", enum.name.upper() + "_"}
        zero = [v for v in values if re.search(r"=\s*0\s*;", v.text)]
        if len(zero) != 1 or not zero[0].name.endswith("_UNSPECIFIED"):
            problems.append(f"{enum.name}: needs exactly one zero value named *_UNSPECIFIED")
            continue
        prefix = zero[0].name.removesuffix("UNSPECIFIED")
        if prefix not in prefixes:
            problems.append(f"{enum.name}: prefix {prefix} is not one of {sorted(prefixes)}")
        problems += [f"{v.name} lacks prefix {prefix}" for v in values if not v.name.startswith(prefix)]
    assert not problems, problems


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).upper()


def test_upper_snake() -> None:
    assert _upper_snake("FinishReason") == "FINISH_REASON"
    assert _upper_snake("DType") == "D_TYPE"


def test_each_rpc_has_its_own_request_and_response() -> None:
    rpc_line = re.compile(r"rpc\s+(\w+)\s*\(\s*(\w+)\s*\)\s*returns\s*\(\s*(?:stream\s+)?(\w+)\s*\)")
    problems = []
    seen: set[str] = set()
    for rpc in (e for e in ELEMENTS if e.kind == "rpc"):
        match = rpc_line.search(rpc.text)
        assert match is not None, rpc.text
        name, request, response = match.groups()
        if request != f"{name}Request" or response != f"{name}Response":
            problems.append(f"{name}: ({request}) returns ({response})")
        problems += [f"{m} used twice" for m in (request, response) if m in seen]
        seen |= {request, response}
    assert not problems, problems


def test_package_is_versioned() -> None:
    for path in PROTO_FILES:
        assert re.search(r"^package vlm\.v1;$", path.read_text(), flags=re.MULTILINE), path.name


def test_reader_flags_an_undocumented_field(tmp_path: Path) -> None:
    """The checker itself can fail: a field without a comment is reported."""
    bad = tmp_path / "bad.proto"
    bad.write_text(
        'syntax = "proto3";\n// Doc.\nmessage A {\n  // Doc.\n  string x = 1;\n  string y = 2;\n}\n'
    )
    undocumented = [e.name for e in parse_proto(bad) if not e.commented]
    assert undocumented == ["y"]


def test_grpc_tools_is_available_for_codegen() -> None:
    assert importlib.util.find_spec("grpc_tools") is not None

"""Print the pins of deploy/constraints.txt: every runtime dependency of Tandem, as installed.

The container image installs Tandem with ``pip install --constraint deploy/constraints.txt``,
so it gets exactly the versions the tests ran against. Regenerate the file after changing
``dependencies`` in pyproject.toml or upgrading packages, from the project's virtualenv (where
``pip install -e '.[dev]'`` installed Tandem):

    .venv/bin/python deploy/constraints.py > deploy/constraints.txt

The pins are the transitive closure of Tandem's runtime requirements (its ``dev`` extra left
out), with environment markers evaluated for the image's platform (CPython 3.11 on Linux), so
the CUDA wheels the PyPI build of torch needs are pinned too; the CPU build of torch simply
does not ask for them.
"""

from __future__ import annotations

from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "tandem"
IMAGE_ENVIRONMENT = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "os_name": "posix",
    "python_version": "3.11",
}


def _environment(extra: str) -> dict[str, str]:
    return {**default_environment(), **IMAGE_ENVIRONMENT, "extra": extra}


def _wanted(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Whether ``requirement`` applies on the image's platform for a package asked with ``extras``."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate(_environment(extra)) for extra in extras | {""})


def runtime_requirements(root: str = ROOT) -> dict[str, list[Requirement]]:
    """Every package ``root`` needs at run time, with the requirements that asked for it.

    Raises ``metadata.PackageNotFoundError`` when one of them is not installed here.
    """
    found: dict[str, list[Requirement]] = {}
    pending: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if not _wanted(requirement, extras):
                continue
            key = canonicalize_name(requirement.name)
            found.setdefault(key, []).append(requirement)
            pending.append((key, frozenset(requirement.extras)))
    found.pop(canonicalize_name(root), None)
    return found


def pins(root: str = ROOT) -> list[str]:
    """``name==version`` for every runtime dependency of ``root``, sorted by name."""
    return [f"{name}=={metadata.version(name)}" for name in sorted(runtime_requirements(root))]


def main() -> None:
    print("# Exact versions of every runtime dependency of Tandem, for reproducible image builds")
    print("# (pip install --constraint). Regenerate: python deploy/constraints.py > deploy/constraints.txt")
    print("\n".join(pins()))


if __name__ == "__main__":
    main()

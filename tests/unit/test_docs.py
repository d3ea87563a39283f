"""The documentation keeps up with the code: the configuration reference is the model's own,
every key is documented, and the README stays a short front door whose links all land."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from rpcbalancer.config import model
from rpcbalancer.config.reference import INTERNAL, docstrings, render

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REFERENCE = ROOT / "docs" / "configuration.md"

MODELS = sorted(
    (
        cls
        for cls in vars(model).values()
        if isinstance(cls, type)
        and issubclass(cls, BaseModel)
        and cls.__module__ == model.__name__
        and not cls.__name__.startswith("_")
    ),
    key=lambda cls: cls.__name__,
)


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model a field holds and how its keys are written below it (``.`` or ``[].``)."""
    candidates = [annotation, *get_args(annotation)]
    for arg in candidates:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            origin = get_origin(annotation)
            return arg, "[]." if origin is tuple else ".<name>." if origin is dict else "."
    return None, ""


def _dotted_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    # Walked here rather than taken from the renderer, so a key it forgot is caught.
    keys = []
    for name, field in cls.model_fields.items():
        if not prefix and name in INTERNAL:
            continue
        keys.append(prefix + name)
        sub, joint = _nested(field.annotation)
        if sub is not None:
            keys += _dotted_keys(sub, prefix + name + joint)
    return keys


def test_configuration_reference_is_rendered_from_the_model() -> None:
    assert REFERENCE.read_text() == render(), (
        "docs/configuration.md differs from the config model's docstrings: run `make docs`"
    )


@pytest.mark.parametrize("cls", MODELS, ids=lambda cls: cls.__name__)
def test_every_config_field_has_a_description(cls: type[BaseModel]) -> None:
    described = docstrings(cls)
    missing = [name for name in cls.model_fields if not described.get(name, "").strip()]
    assert not missing, f"{cls.__name__}: give these fields a docstring: {missing}"


def test_every_config_key_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    keys = _dotted_keys(model.Config)
    assert "api_keys.keys[].rate_limit.burst" in keys and "nodes[].url" in keys
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"not in docs/configuration.md (run `make docs`): {missing}"


def test_readme_is_a_short_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the reference goes in docs/"


# Written in parallel with these pages; linked already, checked as soon as it exists.
PENDING = {"ARCHITECTURE.md"}


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    headings = re.findall(r"^#+\s+(.*)$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize(
    "page",
    ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))],
)
def test_links_land_on_files_that_exist(page: str) -> None:
    path = ROOT / page
    broken = [
        target
        for target in _relative_links(path)
        if not (path.parent / target.split("#")[0]).exists()
        and not (Path(target).name in PENDING and not (ROOT / Path(target).name).exists())
    ]
    assert not broken, f"{page} links to files that do not exist: {broken}"


@pytest.mark.parametrize(
    "page",
    ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))],
)
def test_links_to_sections_land_on_headings(page: str) -> None:
    path = ROOT / page
    broken = []
    for target in _relative_links(path):
        file, _, anchor = target.partition("#")
        linked = (path.parent / file) if file else path
        checked = anchor and linked.suffix == ".md" and linked.exists()
        if checked and anchor not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{page} links to sections that do not exist: {broken}"


def test_the_architecture_page_names_every_module_and_no_other() -> None:
    """Its tree of packages lists every module of ``src/rpcbalancer`` (a package listed as
    a whole names its own), and each ``.py`` it names exists: it cannot fall behind a move."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    tree = text[text.index("## The packages") : text.index("## One request")]
    package = ROOT / "src" / "rpcbalancer"
    modules = [p.relative_to(package) for p in package.rglob("*.py") if p.name != "__init__.py"]
    whole = {"policies", "chains", "store", "hosts", "commands", "sim"}
    missing = [
        str(m)
        for m in modules
        if m.name not in tree and not (set(m.parts[:-1]) & whole and f"{m.parts[-2]}/" in tree)
    ]
    assert missing == []
    named = set(re.findall(r"([a-z_]+\.py)\b", tree)) - {"__init__.py"}
    assert named - {m.name for m in modules} == set()

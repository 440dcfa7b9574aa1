"""The documentation against the code: the configuration reference, the README, the links.

``docs/configuration.md`` holds the configuration reference: a table with one
row per environment variable (variable, meaning, default). It is tied to
``certproxy/service/config.py`` here, so that a setting cannot be added,
renamed or given a new default without the reference following.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from certproxy.service.config import CONFIG_VAR, PURE_VAR, SETTINGS, Config, env_name

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
REFERENCE = DOCS / "configuration.md"

# The environment variables of the interface contract (DESIGN.md's tables:
# the compose files and the issuers depend on them).
CONTRACT = (
    "CERTPROXY_STORE",
    "CERTPROXY_DOMAINS",
    "CERTPROXY_EMAIL",
    "CERTPROXY_STAGING",
    "CERTPROXY_ACME_DIRECTORY",
    "CERTPROXY_ACME_CA_BUNDLE",
    "CERTPROXY_ACME",
    "CERTPROXY_BIND",
    "CERTPROXY_HTTP_PORT",
    "CERTPROXY_ROUTES",
    "CERTPROXY_CHALLENGE",
    "CERTPROXY_DNS_SERVER",
    "CERTPROXY_DNS_TSIG_KEY",
    "CERTPROXY_DNS_TSIG_SECRET",
    "CERTPROXY_DNS_TSIG_ALGORITHM",
    "CERTPROXY_DNS_ZONE",
    "CERTPROXY_DNS_PROVIDER",
    "CERTPROXY_LOCAL_CA",
)
README_MAX_LINES = 200

_ROW = re.compile(r"\|\s*`(CERTPROXY_[A-Z0-9_]+)`\s*\|")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")  # a table cell may hold an escaped \|
_LONE_CODE = re.compile(r"`([^`]*)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def reference_rows() -> dict[str, str]:
    """Variable -> its default cell, from the rows of the reference whose first
    cell is a single ``CERTPROXY_*`` variable. A variable listed twice fails."""
    rows: dict[str, str] = {}
    for line in REFERENCE.read_text().splitlines():
        if not _ROW.match(line):
            continue
        cells = [c.strip() for c in _CELL_SPLIT.split(line.strip())[1:-1]]
        assert len(cells) == 3, f"not a row of variable | meaning | default: {line}"
        variable = cells[0].strip("`")
        assert variable not in rows, f"{variable} has two rows in {REFERENCE.name}"
        rows[variable] = cells[2]
    return rows


def test_every_setting_has_a_row_in_the_reference() -> None:
    rows = reference_rows()
    missing = sorted(env_name(name) for name in SETTINGS if env_name(name) not in rows)
    assert not missing, f"settings without a row in docs/configuration.md: {missing}"


def test_every_row_of_the_reference_names_a_setting() -> None:
    known = {env_name(name) for name in SETTINGS} | {CONFIG_VAR, PURE_VAR}
    unknown = sorted(set(reference_rows()) - known)
    assert not unknown, f"rows naming no setting of certproxy/service/config.py: {unknown}"


def test_every_setting_is_a_field_of_config() -> None:
    # The defaults below are read from Config: a setting without a field would have none.
    assert set(SETTINGS) <= {f.name for f in fields(Config)}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_documented_default_is_the_code_default(name: str) -> None:
    """How a default cell is compared with ``Config()``'s value (every setting is checked):

    - a simple value is written as one code span alone in its cell (`` `900` ``,
      `` `/var/lib/certproxy` ``, `` `443=http://registry-ui:80,...` ``). It is
      parsed by the setting's own parser, as a value of the environment variable
      would be, and must equal the dataclass default (``900`` -> ``900.0``,
      ``0`` -> ``False``, the routes string -> its ``Route`` tuple);
    - anything else is words for a setting that is unset by default ("none",
      "off", "system trust", "on when DOMAINS is set", "443 when it is routed"):
      the dataclass default must then be ``None`` or empty. What the words say
      unset means is the code's behaviour, which the tests of config.py cover.
    """
    cell = reference_rows().get(env_name(name))
    if cell is None:
        pytest.fail(f"{env_name(name)} has no row in docs/configuration.md")
    default = getattr(Config(), name)
    literal = _LONE_CODE.fullmatch(cell)
    if literal is None:
        assert default is None or default == (), (
            f"{env_name(name)}: the reference describes the default in words ({cell!r}), "
            f"but the code's default is {default!r}; write it as `value`"
        )
        return
    documented = SETTINGS[name](literal.group(1), f"docs/configuration.md: {env_name(name)}")
    assert documented == default, (
        f"{env_name(name)}: the reference says {cell} ({documented!r}), the code's default is {default!r}"
    )


def test_the_contract_variables_are_in_the_reference() -> None:
    rows = reference_rows()
    assert not [v for v in CONTRACT if v not in rows]


def test_the_readme_is_short_and_links_every_page_of_docs() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < README_MAX_LINES
    linked = {target.partition("#")[0] for target in _LINK.findall(text)}
    pages = sorted(f"docs/{page.name}" for page in DOCS.glob("*.md"))
    assert [page for page in pages if page not in linked] == []


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation gone, spaces to dashes."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        exists = file.exists() and (not anchor or file.suffix != ".md" or anchor in _anchors(file))
        if not exists:
            broken.append(target)
    assert broken == []

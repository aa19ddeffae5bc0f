"""Static checks: linters, playbook syntax, module documentation, role argument specs, host Python."""

import ast
import gc
import json
import re
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from conftest import pyenv_python

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = ["post_workshop.yml", *sorted(str(p.relative_to(REPO)) for p in (REPO / "playbooks").glob("*.yml"))]
MODULES = sorted(p.stem for p in (REPO / "library").glob("*.py"))
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "defaults" / "main.yml").exists())


def run(*command):
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    assert completed.returncode == 0, completed.stdout[-8000:] + completed.stderr[-4000:]
    return completed.stdout


def test_ruff():
    run("ruff", "check", ".")
    run("ruff", "format", "--check", ".")


def test_yamllint():
    run("yamllint", "--strict", ".")


@pytest.mark.playbook  # half a minute: make lint and make test run it, make test-unit does not
def test_ansible_lint_production_profile():
    run("ansible-lint", "--profile", "production", "--offline")


# One ansible-playbook or ansible-doc run for all playbooks or modules (each run costs a second of
# start-up); a test of one of them runs it alone only to name what failed.
@pytest.fixture(scope="module")
def syntax_of_all_playbooks():
    return subprocess.run(["ansible-playbook", "--syntax-check", *PLAYBOOKS], cwd=REPO, capture_output=True, check=False)


@pytest.fixture(scope="module")
def rendered_module_docs():
    """module -> its ansible-doc text."""
    out = re.sub(r"\x1b\[[0-9;]*m", "", run("ansible-doc", "-M", "library", *MODULES))
    return {section.split()[0]: section for section in re.split(r"^> MODULE ", out, flags=re.M)[1:]}


@pytest.fixture(scope="module")
def module_docs():
    """module -> its documentation as ansible-doc reads it (fragments merged)."""
    return json.loads(run("ansible-doc", "-M", "library", "--json", *MODULES))


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(playbook, syntax_of_all_playbooks):
    if syntax_of_all_playbooks.returncode != 0:
        run("ansible-playbook", "--syntax-check", playbook)


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_renders(module, rendered_module_docs):
    out = rendered_module_docs[module]
    assert "EXAMPLES:" in out and "RETURN VALUES:" in out


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_match_defaults(role):
    """Every public variable of a role is documented in meta/argument_specs.yml, and only those."""
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    # Settings of other roles: the workshop role's (workshop-wide) and another phase's (archive_targets).
    others = {
        name: path.parent.parent.name
        for path in REPO.glob("roles/*/defaults/main.yml")
        if path.parent.parent.name != role
        for name in yaml.safe_load(path.read_text()) or {}
    }
    documented = set()
    for entry in specs["argument_specs"].values():
        for name, option in entry["options"].items():
            if name in others and name not in defaults:
                # A setting of another role this one reads: declared (documented, typed, no default of
                # its own), and one the other role's defaults set.
                assert "default" not in option and option.get("description"), name
                continue
            documented.add(name)
    assert set(defaults) == documented
    assert all(name.startswith(f"{role}_") for name in defaults)
    for entry in specs["argument_specs"].values():
        for name, option in entry["options"].items():
            if name in defaults:
                assert str(option.get("default")) == str(defaults[name]), name


class _SpecCaptured(Exception):
    pass


def argument_spec_of(module):
    """The argument_spec a module's main() builds, caught at the AnsibleModule call."""
    from conftest import load_module

    loaded = load_module(module)

    def capture(argument_spec, **_):
        raise _SpecCaptured(argument_spec)

    loaded.AnsibleModule = capture
    with pytest.raises(_SpecCaptured) as caught:
        loaded.main()
    return caught.value.args[0]


@pytest.mark.parametrize("module", MODULES)
def test_documented_options_match_the_argument_spec(module, module_docs):
    """DOCUMENTATION (with its fragments) says exactly what the code accepts: names, types, defaults, choices."""
    documented = module_docs[module]["doc"]["options"]
    spec = argument_spec_of(module)
    assert set(documented) == set(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert doc.get("type", "str") == option.get("type", "str"), name
        assert doc.get("default") == option.get("default"), name
        assert bool(doc.get("required")) == bool(option.get("required")), name
        assert doc.get("choices") == option.get("choices"), name
        assert doc.get("elements") == option.get("elements"), name
        assert bool(option.get("no_log")) == (name.endswith("password") or "token" in name), name


# The oldest Python a workshop host may have (README, "Workshop hosts"): modules and module_utils
# run there, not on the control node's Python.
OLDEST_HOST_PYTHON = "3.8"
HOST_CODE = sorted([*(REPO / "library").glob("*.py"), *(REPO / "module_utils").rglob("*.py")])
# Builtins that `X | Y` would combine into a types.UnionType: a TypeError before Python 3.10.
_TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "dict", "list", "tuple", "set", "None", "datetime", "Path"}


def test_host_code_needs_no_newer_python_than_the_oldest_host():
    out = run(
        "vermin",
        "--no-tips",
        "--violations",
        "--eval-annotations",
        "--backport",
        "typing",
        f"-t={OLDEST_HOST_PYTHON}-",
        *map(str, HOST_CODE),
    )
    assert f"Minimum required versions: {OLDEST_HOST_PYTHON}" in out or "Minimum required versions: 3.0" in out, out


def parse_python(source):
    """ast.parse in a thread of its own with the collector paused: in a long pytest-xdist worker,
    CPython 3.11.7's AST builder can raise "AST constructor recursion depth mismatch" (gh-106905,
    fixed in 3.11.8)."""
    parsed = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        worker = threading.Thread(target=lambda: parsed.append(ast.parse(source)))
        worker.start()
        worker.join()
    finally:
        if enabled:
            gc.enable()
    assert parsed, "the source did not parse"
    return parsed[0]


def _pep604_unions(tree):
    """`int | None`-style unions of type names, which vermin does not see and Python < 3.10 rejects."""

    def is_type(node):
        if isinstance(node, ast.Constant) and node.value is None:
            return True
        if isinstance(node, ast.Name) and node.id in _TYPE_NAMES:
            return True
        return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and is_type(node.left) and is_type(node.right)

    unions = (node for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr))
    return sorted({node.lineno for node in unions if is_type(node)})


@pytest.mark.parametrize("path", HOST_CODE, ids=lambda p: str(p.relative_to(REPO)))
def test_host_code_has_no_runtime_type_unions(path):
    assert _pep604_unions(parse_python(path.read_text())) == [], f"{path}: use Optional[...] or a tuple of types"


def test_the_union_check_catches_what_it_should():
    assert _pep604_unions(parse_python("isinstance(v, int | float)\nx: int | None = None\ny = a | b")) == [1, 2]


@pytest.mark.parametrize("version", ["3.8", "3.10"])
def test_host_code_compiles_on_old_pythons(version):
    python = pyenv_python(version)
    run(python, "-m", "py_compile", *map(str, HOST_CODE))


def _boolean_variables():
    """(role, name) of every variable a role's argument spec types as bool."""
    for role in ROLES:
        specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
        for entry in specs["argument_specs"].values():
            for name, option in entry["options"].items():
                if option.get("type") == "bool":
                    yield role, name


BOOLEANS = sorted(set(_boolean_variables()))
# Where variables are read: every task file, template and playbook.
JINJA_FILES = sorted(
    [
        *REPO.glob("roles/*/tasks/*.yml"),
        *REPO.glob("roles/*/templates/*"),
        *REPO.glob("playbooks/*.yml"),
        REPO / "post_workshop.yml",
    ]
)
# Keys whose values are Jinja expressions without braces.
CONDITION_KEYS = {"when", "failed_when", "changed_when", "until", "break_when", "that"}
_JINJA = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)


def _strings(node, key=None):
    """(key, string) of every string in a YAML document, with the mapping key that holds it."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _strings(value, name)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value, key)
    elif isinstance(node, str):
        yield key, node


def _expressions(node):
    """The Jinja expressions of a YAML document, less whole values handed on to a module option."""
    for key, text in _strings(node):
        if key in CONDITION_KEYS:
            yield text
        elif not re.fullmatch(r"\{\{\s*\w+\s*\}\}", text.strip()):  # modules convert "false" themselves
            yield from ("".join(parts) for parts in _JINJA.findall(text))


def _unconverted_reads(name, expressions):
    """Expressions reading `name` without `| bool`: `-e name=false` arrives as the string "false", which is true."""
    read = re.compile(rf"\b{name}\b(?!\s*\|\s*bool)")
    literal = re.compile(r"'[^']*'|\"[^\"]*\"")  # text that merely names the switch
    return [expression.strip() for expression in expressions if read.search(literal.sub("''", expression))]


def _file_expressions(path):
    if path.suffix == ".yml":
        return list(_expressions(yaml.safe_load(path.read_text())))
    return ["".join(parts) for parts in _JINJA.findall(path.read_text())]


@pytest.mark.parametrize(("role", "name"), BOOLEANS, ids=[name for _, name in BOOLEANS])
def test_every_boolean_switch_works_given_as_a_string(role, name):
    found = {str(path.relative_to(REPO)): _unconverted_reads(name, _file_expressions(path)) for path in JINJA_FILES}
    assert {path: reads for path, reads in found.items() if reads} == {}, f"read {name} with '| bool'"


def test_the_boolean_check_catches_a_bare_read():
    document = yaml.safe_load(
        "- when: drain_reopen\n  debug: {msg: \"{{ 'a' if drain_reopen else 'b' }}\"}\n"
        '- when: drain_reopen | bool\n  x: {flag: "{{ drain_reopen }}", text: drain_reopen}\n'
        "- assert: {that: [not drain_reopen|bool]}\n"
        "- debug: {msg: \"{{ 'set drain_reopen' }}\"}\n"
    )
    assert _unconverted_reads("drain_reopen", _expressions(document)) == ["drain_reopen", "'a' if drain_reopen else 'b'"]


# --- Roles declare what they read -------------------------------------------------------------
# Variables every role may read without declaring them: Ansible's magic variables (and facts,
# ansible_*), the loop item, omit, and the Jinja globals Ansible adds (lookups, now, range...).
MAGIC_VARIABLES = {
    "omit",
    "item",
    "inventory_hostname",
    "inventory_hostname_short",
    "hostvars",
    "groups",
    "group_names",
    "play_hosts",
    "playbook_dir",
    "role_path",
    "role_name",
    "inventory_dir",
    "inventory_file",
    "environment",
    "lookup",
    "query",
    "q",
    "now",
    "undef",
    "range",
    "dict",
    "lipsum",
    "cycler",
    "joiner",
    "namespace",
    "true",
    "false",
    "none",
    "True",
    "False",
    "None",
}
_TEMPLATE_ENV = None


class _AnyName(dict):
    def __contains__(self, name):
        return True

    def get(self, name, default=None):
        return super().get(name, str)


def _jinja_reads(text, expression=False):
    """Names a Jinja text (or a bare expression, as in `when:`) reads from outside itself.

    Names only tested for being defined (`x is defined`) are not read: that is how a role refuses
    a retired setting given by mistake.
    """
    global _TEMPLATE_ENV
    import jinja2
    from jinja2 import meta, nodes

    if _TEMPLATE_ENV is None:
        _TEMPLATE_ENV = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"])
        # Ansible's filters and tests (bool, combine, abs...) are not Jinja's: take any name as one.
        _TEMPLATE_ENV.filters = _AnyName(_TEMPLATE_ENV.filters)
        _TEMPLATE_ENV.tests = _AnyName(_TEMPLATE_ENV.tests)
    tree = _TEMPLATE_ENV.parse("{{ (" + text + ") }}" if expression else text)
    for test in tree.find_all(nodes.Test):
        if test.name in ("defined", "undefined"):
            test.node = nodes.Const(None)
    return meta.find_undeclared_variables(tree)


def _yaml_reads(document):
    reads = set()
    for key, text in _strings(document):
        if key in CONDITION_KEYS and "{{" not in text:  # a bare expression (a module's option may share the name: until)
            reads |= _jinja_reads(text, expression=True)
        elif "{{" in text or "{%" in text:
            reads |= _jinja_reads(text)
    return reads


def _tasks(node):
    """Every task (and block) of a task file, nested blocks included."""
    for task in node or []:
        if isinstance(task, dict):
            yield task
            for section in ("block", "rescue", "always"):
                yield from _tasks(task.get(section))


def role_variables(files):
    """(declared, defined, reads) of a role given as {relative path: text}."""
    declared, defined, reads = set(), set(), set()
    for path, text in files.items():
        if path.startswith("templates/"):
            reads |= _jinja_reads(text)
            continue
        document = yaml.safe_load(text)
        if path == "meta/argument_specs.yml":
            for entry in document["argument_specs"].values():
                declared |= set(entry.get("options") or {})
            continue
        if path.startswith("meta/"):
            continue
        reads |= _yaml_reads(document)
        if path in ("defaults/main.yml",):
            declared |= set(document or {})
        elif path.startswith("vars/"):
            defined |= set(document or {})
        elif path.startswith(("tasks/", "handlers/")):
            for task in _tasks(document):
                defined |= set(task.get("vars") or {})
                defined |= {task["register"]} if "register" in task else set()
                defined |= set(task.get("ansible.builtin.set_fact") or task.get("set_fact") or {}) - {"cacheable"}
                defined |= {(task.get("loop_control") or {}).get("loop_var", "item")}
    return declared, defined, reads


def undeclared_reads(role, files):
    """What a role reads that it neither declares nor defines, and what it defines without its prefix."""
    declared, defined, reads = role_variables(files)
    unknown = reads - declared - defined - MAGIC_VARIABLES
    unknown = {name for name in unknown if not name.startswith("ansible_")}
    unprefixed = {name for name in defined if not name.startswith((f"_{role}_", f"__{role}_", "item"))}
    return sorted(unknown), sorted(unprefixed)


def _role_files(role):
    root = REPO / "roles" / role
    paths = [
        *root.glob("defaults/*.yml"),
        *root.glob("vars/*.yml"),
        *root.glob("tasks/*.yml"),
        *root.glob("handlers/*.yml"),
        *root.glob("meta/*.yml"),
        *(p for p in root.glob("templates/**/*") if p.is_file()),
    ]
    return {str(p.relative_to(root)): p.read_text() for p in paths}


ALL_ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists())


@pytest.mark.parametrize("role", ALL_ROLES)
def test_a_role_reads_only_what_it_declares_or_defines(role):
    """Every variable a role reads is in its argument spec (its own settings and each workshop_* global)
    or defined inside it (_<role>_* in vars or set_fact, __<role>_* registered); nothing else leaks in."""
    unknown, unprefixed = undeclared_reads(role, _role_files(role))
    assert unknown == [], f"roles/{role} reads variables its meta/argument_specs.yml does not declare"
    assert unprefixed == [], f"roles/{role} defines variables without its _{role}_/__{role}_ prefix"


def test_the_declaration_check_catches_an_undeclared_read():
    files = {
        "defaults/main.yml": 'drain_timeout: 60\ndrain_url: "{{ workshop_queue_manager_url }}/x"\n',
        "meta/argument_specs.yml": "argument_specs:\n  main:\n    options:\n      drain_timeout: {type: int}\n"
        "      drain_url: {type: str}\n",
        "vars/main.yml": '_drain_last: "{{ __drain_wait.results | last }}"\n',
        "tasks/main.yml": "- name: Wait\n  queue_drain:\n    timeout: '{{ drain_timeout }}'\n  register: __drain_wait\n"
        "  when: backup_dir is abs and old_setting is not defined\n"
        '- name: Note\n  ansible.builtin.set_fact:\n    total: "{{ _drain_last.counts | default(omit) }}"\n'
        "  loop: \"{{ groups['gpu'] }}\"\n  failed_when: item.rc != 0 and ansible_check_mode\n",
        "templates/x.j2": "{% for user in users %}{{ user }} {{ workshop_id }}{% endfor %}\n",
    }
    assert undeclared_reads("drain", files) == (["backup_dir", "users", "workshop_id", "workshop_queue_manager_url"], ["total"])

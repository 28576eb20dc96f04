"""A small Bicep reader for the infra tests, built on the tree-sitter-bicep grammar.

The Bicep compiler cannot be installed on these machines, so the tests parse every `.bicep` file
with tree-sitter (a syntax check: no ERROR or MISSING nodes) and query the syntax tree for what
must be declared. Nothing here evaluates Bicep: expressions are compared as source text.
Performs no I/O beyond reading files under the repository.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Iterator

import tree_sitter
import tree_sitter_bicep

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN_BICEP = INFRA / "main.bicep"
MAIN_PARAMETERS = INFRA / "main.parameters.json"  # azd's: values from the azd environment, ${NAME[=default]}
CLI_PARAMETERS = INFRA / "cli.parameters.json"  # the Azure CLI path: plain values
AZURE_YAML = ROOT / "azure.yaml"
LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.example.json"
HOST_JSON = ROOT / "host.json"

Node = tree_sitter.Node


@cache
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))


def text(node: Node | None) -> str:
    return "" if node is None else node.text.decode("utf-8")


def walk(node: Node) -> Iterator[Node]:
    """Every node under `node` (itself included), depth first, in source order."""
    yield node
    for child in node.children:
        yield from walk(child)


def syntax_errors(tree: tree_sitter.Tree) -> list[str]:
    """'line:col ERROR|MISSING <text>' for every node the grammar could not place."""
    problems = []
    for node in walk(tree.root_node):
        if node.type == "ERROR" or node.is_missing:
            kind = "MISSING" if node.is_missing else "ERROR"
            row, col = node.start_point
            problems.append(f"{row + 1}:{col + 1} {kind} {text(node)[:60]!r}")
    return problems


def string_value(node: Node | None) -> str | None:
    """The value of a plain string literal ('abc'), or None for anything else (interpolation too)."""
    if node is None or node.type != "string":
        return None
    if any(c.type == "interpolation" for c in node.named_children):
        return None
    return "".join(text(c) for c in node.named_children if c.type in ("string_content", "escape_sequence"))


def template_text(node: Node) -> str:
    """A string literal with each ${...} replaced by 'X' (for names built in lambdas)."""
    parts = []
    for child in node.named_children:
        parts.append("X" if child.type == "interpolation" else text(child))
    return "".join(parts)


def property_key(prop: Node) -> str:
    key = prop.named_children[0]
    value = string_value(key)
    return value if value is not None else text(key)


def property_value(prop: Node) -> Node:
    return prop.named_children[-1]


@dataclass
class Declaration:
    kind: str  # param | var | output | resource | module | func | type
    name: str
    node: Node
    decorators: list[str] = field(default_factory=list)  # decorator function names: description, secure, ...
    decorator_nodes: list[Node] = field(default_factory=list)

    @property
    def value(self) -> Node | None:
        """The expression after '=' (param default, var/output value, resource/module body)."""
        named = self.node.named_children
        return named[-1] if named else None

    @property
    def default(self) -> Node | None:
        """A param's default value expression (None when the param is required)."""
        named = [c for c in self.node.named_children if c.type != "comment"]
        return named[2] if self.kind == "param" and len(named) >= 3 else None

    @property
    def line(self) -> int:
        return self.node.start_point[0] + 1

    def decorator(self, name: str) -> Node | None:
        for dec_name, dec in zip(self.decorators, self.decorator_nodes):
            if dec_name == name:
                return dec
        return None


_KINDS = {
    "parameter_declaration": "param",
    "variable_declaration": "var",
    "output_declaration": "output",
    "resource_declaration": "resource",
    "module_declaration": "module",
    "user_defined_function": "func",
    "type_declaration": "type",
}


class BicepFile:
    def __init__(self, path: Path | None, source: str) -> None:
        self.path = path
        self.source = source
        self.tree = _parser().parse(source.encode("utf-8"))
        self.root = self.tree.root_node

    @classmethod
    def load(cls, path: Path) -> "BicepFile":
        return cls(path, path.read_text(encoding="utf-8"))

    @classmethod
    def from_source(cls, source: str) -> "BicepFile":
        return cls(None, source)

    @property
    def label(self) -> str:
        if self.path is None:
            return "<snippet>"
        try:
            return str(self.path.relative_to(ROOT))
        except ValueError:
            return str(self.path)

    def errors(self) -> list[str]:
        return syntax_errors(self.tree)

    # declarations -----------------------------------------------------------------------------
    def declarations(self) -> list[Declaration]:
        out: list[Declaration] = []
        pending: list[Node] = []
        for child in self.root.named_children:
            if child.type == "comment":
                continue
            if child.type == "decorators":
                pending.extend(c for c in child.named_children if c.type == "decorator")
                continue
            kind = _KINDS.get(child.type)
            if kind is None:
                pending = []
                continue
            names = []
            for dec in pending:
                call = dec.named_children[0] if dec.named_children else None
                fn = call.child_by_field_name("function") if call is not None and call.type == "call_expression" else call
                names.append(text(fn))
            name_node = child.child_by_field_name("name") or child.named_children[0]
            out.append(Declaration(kind, text(name_node), child, names, list(pending)))
            pending = []
        return out

    def of_kind(self, kind: str) -> dict[str, Declaration]:
        return {d.name: d for d in self.declarations() if d.kind == kind}

    def params(self) -> dict[str, Declaration]:
        return self.of_kind("param")

    def variables(self) -> dict[str, Declaration]:
        return self.of_kind("var")

    def outputs(self) -> dict[str, Declaration]:
        return self.of_kind("output")

    def modules(self) -> dict[str, Declaration]:
        return self.of_kind("module")

    def resources(self, include_existing: bool = False) -> list[tuple[str, Node]]:
        """(type without API version, resource_declaration node) for every resource, nested ones too."""
        found = []
        for node in walk(self.root):
            if node.type != "resource_declaration":
                continue
            if not include_existing and any(c.type == "existing" for c in node.children):
                continue
            type_node = node.named_children[1]
            found.append(((string_value(type_node) or text(type_node)).split("@")[0], node))
        return found

    def string_literals(self) -> set[str]:
        return {v for n in walk(self.root) if (v := string_value(n)) is not None}

    def identifier_uses(self, name: str, outside: Node | None = None) -> int:
        """How often identifier `name` is referenced, not counting the subtree `outside`."""
        count = 0
        for node in walk(self.root):
            if node.type == "identifier" and text(node) == name:
                if outside is not None and outside.start_byte <= node.start_byte < outside.end_byte:
                    continue
                count += 1
        return count


def find_properties(node: Node, key: str, case_sensitive: bool = True) -> list[Node]:
    """Values of every `key: value` object property under `node`."""
    found = []
    for n in walk(node):
        if n.type == "object_property":
            k = property_key(n)
            if k == key or (not case_sensitive and k.lower() == key.lower()):
                found.append(property_value(n))
    return found


def top_object_properties(node: Node) -> list[Node]:
    """object_property nodes under `node` not nested in another property's value.

    For `var x = cond ? {a: ..} : union({b: ..}, {c: {d: ..}})` that is a, b and c (not d).
    """
    found = []

    def visit(n: Node) -> None:
        if n.type == "object_property":
            found.append(n)
            return  # do not descend into its value
        if n.type == "lambda_expression":
            return
        for child in n.children:
            visit(child)

    visit(node)
    return found


def module_call_params(module: Declaration) -> dict[str, Node]:
    body = module.value
    for prop in top_object_properties(body) if body is not None else []:
        if property_key(prop) == "params":
            value = property_value(prop)
            return {property_key(p): property_value(p) for p in top_object_properties(value)}
    return {}


def bicep_files() -> list[BicepFile]:
    return [BicepFile.load(p) for p in sorted(INFRA.rglob("*.bicep"))]


# App settings --------------------------------------------------------------------------------
# Convention (infra/app/function-app.bicep): app settings are assembled from variables whose names
# end in `AppSettings`, each an object (possibly behind a condition or inside union()) of
# setting-name: value, or toObject(items, k => 'NAME_${...}', v => ...) for per-client names.
APP_SETTINGS_VAR = re.compile(r"AppSettings$")


@dataclass(frozen=True)
class BicepSetting:
    name: str  # interpolations replaced by 'X'
    value: str  # source text of the value expression
    variable: str
    file: str


def app_settings(files: list[BicepFile]) -> list[BicepSetting]:
    out: list[BicepSetting] = []
    for f in files:
        for var in f.variables().values():
            if not APP_SETTINGS_VAR.search(var.name) or var.value is None:
                continue
            for prop in top_object_properties(var.value):
                out.append(BicepSetting(property_key(prop), text(property_value(prop)), var.name, f.label))
            for node in walk(var.value):
                if node.type != "call_expression" or text(node.child_by_field_name("function")) != "toObject":
                    continue
                args = node.child_by_field_name("arguments") or node.named_children[-1]
                lambdas = [a for a in args.named_children if a.type == "lambda_expression"]
                if len(lambdas) < 2:
                    continue
                key_body, value_body = lambdas[0].named_children[-1], lambdas[1].named_children[-1]
                name = template_text(key_body) if key_body.type == "string" else text(key_body)
                out.append(BicepSetting(name, text(value_body), var.name, f.label))
    return out


# A small evaluator ------------------------------------------------------------------------------
# Enough Bicep to decide what a deployment does for given parameter values: literals, parameters
# (from `env`, else their defaults), `var`s, `!`, `==`, `!=`, `&&`, `||`, `?:`, parentheses, arrays,
# objects and empty(). Anything else (a module output, a resource property, another function) is
# UNKNOWN, and a test that needs it fails instead of guessing.
class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


def evaluate(node: Node | None, f: BicepFile, env: dict[str, object] | None = None) -> object:
    env = env or {}
    if node is None:
        return UNKNOWN
    kind = node.type
    if kind == "string":
        value = string_value(node)
        return UNKNOWN if value is None else value
    if kind == "boolean":
        return text(node) == "true"
    if kind == "number":
        return int(text(node))
    if kind == "null":
        return None
    if kind == "parenthesized_expression":
        return evaluate(node.named_children[0], f, env)
    if kind == "identifier":
        name = text(node)
        if name in env:
            return env[name]
        params, variables = f.params(), f.variables()
        if name in params:
            return evaluate(params[name].default, f, env)
        if name in variables:
            return evaluate(variables[name].value, f, env)
        return UNKNOWN
    if kind == "array":
        return [evaluate(c, f, env) for c in node.named_children if c.type != "comment"]
    if kind == "object":
        return {property_key(p): evaluate(property_value(p), f, env)
                for p in node.named_children if p.type == "object_property"}
    if kind == "unary_expression" and text(node.children[0]) == "!":
        value = evaluate(node.named_children[0], f, env)
        return UNKNOWN if value is UNKNOWN else not value
    if kind == "ternary_expression":
        condition, yes, no = node.named_children
        value = evaluate(condition, f, env)
        if value is UNKNOWN:
            return UNKNOWN
        return evaluate(yes if value else no, f, env)
    if kind == "binary_expression":
        left, operator, right = node.children[0], text(node.children[1]), node.children[2]
        a = evaluate(left, f, env)
        if operator == "&&" and a is False or operator == "||" and a is True:
            return a
        b = evaluate(right, f, env)
        if a is UNKNOWN or b is UNKNOWN:
            return UNKNOWN
        return {"==": lambda: a == b, "!=": lambda: a != b, "&&": lambda: bool(a and b),
                "||": lambda: bool(a or b)}.get(operator, lambda: UNKNOWN)()
    if kind == "call_expression" and text(node.child_by_field_name("function")) == "empty":
        args = [c for c in node.child_by_field_name("arguments").named_children]
        value = evaluate(args[0], f, env) if args else UNKNOWN
        return UNKNOWN if value is UNKNOWN else not value
    return UNKNOWN


def condition_of(declaration_node: Node) -> Node | None:
    """The `if (...)` condition of a conditional resource or module, None when unconditional."""
    for child in declaration_node.children:
        if child.type == "if_statement":
            return child.named_children[0]
    return None


def deployed(declaration_node: Node, f: BicepFile, env: dict[str, object]) -> object:
    condition = condition_of(declaration_node)
    return True if condition is None else evaluate(condition, f, env)

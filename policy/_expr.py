"""The invariant language: parsing and type-checking one rule against a policy's names.

A rule is a small typed expression over the facts of one dispatch::

    rule     := expr
    expr     := or [("implies" | "=>") expr]             right-associative, lowest
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | compare
    compare  := sum [op sum]      op: == != < <= > >= in, not in, subset, contains
    sum      := value ("+" value)*
    value    := NUMBER | STRING | "true" | "false" | "{" [STRING ("," STRING)*] "}"
              | "(" expr ")" | FIELD | "node.labels" "[" STRING "]"

Strings are quoted with ``"`` or ``'`` and have no escapes. Comparisons do not chain.
The fields are in :data:`FIELDS`; every string compared with a field must be a name the
policy declares for that field (a region, a tenant, a data class, ...), so a typo is an
error here rather than a rule that silently never matches.

Parsing is a hand-written Pratt parser over a regular-expression tokenizer: user text is
never handed to ``eval`` or to Python's own parser. Errors carry the character offset in
the rule where they were found; the loader turns it into ``file:line:column``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_LENGTH = 4000  # characters in one rule
MAX_DEPTH = 64  # nesting of parentheses and operators: deeper is refused, not recursed into

ACTIONS = ("task", "actor.create", "actor.call", "transfer")
ANY = "any"

# What the strings of a field name, as a message says it.
_DOMAIN_NOUNS = {
    "tenant": "tenant name",
    "action": "action",
    "region": "region name",
    "jurisdiction": "jurisdiction",
    "class": "data class name",
    "residency": "residency label",
    "label": "label value",
}


@dataclass(frozen=True)
class Type:
    """The type of a value: ``bool``, ``num``, ``str`` or ``set`` (a set of strings).
    `domain` says what a string (or each string of a set) names: "" for a literal whose
    meaning its context gives. `optional`: a string that may be absent."""

    kind: str
    domain: str = ""
    optional: bool = False

    def describe(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "num":
            return "a number"
        noun = _DOMAIN_NOUNS.get(self.domain, "string")
        if self.kind == "set":
            return f"a set of {noun}s"
        article = "an" if noun[0] in "aeiou" else "a"
        return f"{article} {noun}{' or absent' if self.optional else ''}"


BOOL = Type("bool")
NUM = Type("num")
STR = Type("str")
SET = Type("set")

LABELS = "node.labels"
# Every field a rule may read, and its type. `node.labels` takes a key: node.labels["k"].
FIELDS: dict[str, Type] = {
    "tenant": Type("str", "tenant"),
    "action": Type("str", "action"),
    "node.region": Type("str", "region"),
    "node.jurisdiction": Type("str", "jurisdiction"),
    LABELS: Type("str", "label", optional=True),
    "task.region": Type("str", "region", optional=True),
    "task.residency": Type("str", "residency", optional=True),
    "task.cpus": NUM,
    "task.gpus": NUM,
    "task.memory": NUM,
    "inputs.classes": Type("set", "class"),
    "inputs.regions": Type("set", "region"),
    "inputs.jurisdictions": Type("set", "jurisdiction"),
    **{f"usage.{name}": NUM for name in ("tasks", "actors", "cpus", "gpus", "memory")},
    "usage.object_store": NUM,
    **{f"quota.{name}": NUM for name in ("tasks", "actors", "cpus", "gpus", "memory")},
    "quota.object_store": NUM,
}
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")


class ExprError(Exception):
    """One thing wrong with a rule, at character `offset` of its text."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


@dataclass(frozen=True)
class Vocabulary:
    """The names a policy declares, which the strings of a rule must be."""

    regions: Mapping[str, str]  # region -> jurisdiction
    tenants: Collection[str]
    classes: Collection[str]  # data classes of any tenant

    def names(self, domain: str) -> Sequence[str] | None:
        """The declared names of `domain`, or None when any string may occur."""
        jurisdictions = sorted(set(self.regions.values()))
        if domain == "region":
            return sorted(self.regions)
        if domain == "jurisdiction":
            return jurisdictions
        if domain == "tenant":
            return sorted(self.tenants)
        if domain == "class":
            return sorted(self.classes)
        if domain == "action":
            return ACTIONS
        if domain == "residency":
            return [*sorted(self.classes), *jurisdictions, *sorted(self.regions), ANY]
        return None


# ----------------------------------------------------------------------------- the syntax


@dataclass(frozen=True)
class Token:
    kind: str  # "name", "string", "number", "op" or "end"
    text: str
    start: int
    end: int


_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>[0-9]+(?:\.[0-9]+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<string>"[^"\\\n]*"|'[^'\\\n]*')
      | (?P<op>==|!=|<=|>=|=>|[<>(){}\[\],.+])""",
    re.VERBOSE,
)
# Characters people reach for from other languages, and what to write instead.
_INSTEAD = {
    "=": "use '==' to compare",
    "&": "use 'and'",
    "|": "use 'or'",
    "!": "use 'not', or '!=' to compare",
    "-": "only '+' is supported, and numbers are not negative",
    "*": "only '+' is supported",
    "/": "only '+' is supported",
    "%": "only '+' is supported",
    ";": "a rule is one expression",
    "\\": "escapes are not supported",
}


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            char = text[at]
            if char in "\"'":
                rest = text[at + 1 :]
                close = rest.find(char)
                if "\\" in rest[: close if close >= 0 else None]:
                    raise ExprError(at, "escapes are not supported in strings")
                raise ExprError(at, "unterminated string")
            hint = _INSTEAD.get(char)
            raise ExprError(at, f"unexpected character {char!r}" + (f": {hint}" if hint else ""))
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(Token(kind, match.group(), at, match.end()))
        at = match.end()
    tokens.append(Token("end", "", len(text), len(text)))
    return tokens


@dataclass(frozen=True)
class Syntax:
    """A parsed, untyped node: `kind` is "const", "set", "field", "not" or a binary
    operator; `start`..`end` is its text; `at` is where its operator is."""

    kind: str
    start: int
    end: int
    args: tuple[Syntax, ...] = ()
    value: Any = None  # const: the value; set: the strings; field: (path, label key)
    at: int = 0


# Binary operators: binding power, and whether they associate to the right.
_BINARY = {
    "implies": (10, True),
    "=>": (10, True),
    "or": (20, False),
    "and": (30, False),
    **{op: (50, False) for op in ("==", "!=", "<", "<=", ">", ">=", "in", "not in")},
    "subset": (50, False),
    "contains": (50, False),
    "+": (60, False),
}
_NOT_POWER = 40
_COMPARE_POWER = 50
KEYWORDS = frozenset({"and", "or", "not", "in", "implies", "subset", "contains", "true", "false"})


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_LENGTH:
            raise ExprError(MAX_LENGTH, f"the rule is longer than {MAX_LENGTH} characters")
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.peek()
        self.index += 1
        return token

    def parse(self) -> Syntax:
        if self.peek().kind == "end":
            raise ExprError(0, "the rule is empty")
        node = self.expr(0)
        token = self.peek()
        if token.kind != "end":
            if token.text == ")":
                raise ExprError(token.start, "unbalanced parentheses: this ')' closes nothing")
            raise ExprError(
                token.start, f"expected an operator or the end of the rule, got {_shown(token)}"
            )
        return node

    def expr(self, min_power: int) -> Syntax:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(self.peek().start, f"the rule nests deeper than {MAX_DEPTH} levels")
        try:
            left = self.prefix()
            while True:
                op, width = self.infix()
                if op is None:
                    return left
                power, right_assoc = _BINARY[op]
                if power < min_power or (power == min_power and not right_assoc):
                    return left
                token = self.peek()
                self.index += width
                right = self.expr(power if right_assoc else power + 1)
                if power == _COMPARE_POWER and self.infix()[0] in _COMPARISONS:
                    following = self.peek()
                    raise ExprError(
                        following.start, "comparisons do not chain: join them with 'and'"
                    )
                left = Syntax(op, left.start, right.end, (left, right), at=token.start)
        finally:
            self.depth -= 1

    def infix(self) -> tuple[str | None, int]:
        """The binary operator at the cursor and how many tokens it spans."""
        token = self.peek()
        if token.kind == "name" and token.text == "not" and self.peek(1).text == "in":
            return "not in", 2
        if (token.kind == "op" or token.text in KEYWORDS) and token.text in _BINARY:
            return token.text, 1
        return None, 0

    def prefix(self) -> Syntax:
        token = self.take()
        if token.kind == "number":
            return Syntax("const", token.start, token.end, value=float(token.text))
        if token.kind == "string":
            return Syntax("const", token.start, token.end, value=token.text[1:-1])
        if token.kind == "name" and token.text in ("true", "false"):
            return Syntax("const", token.start, token.end, value=token.text == "true")
        if token.kind == "name" and token.text == "not":
            operand = self.expr(_NOT_POWER)
            return Syntax("not", token.start, operand.end, (operand,), at=token.start)
        if token.text == "(":
            inner = self.expr(0)
            close = self.take()
            if close.text != ")":
                if close.kind == "end":
                    raise ExprError(token.start, "unbalanced parentheses: this '(' is never closed")
                raise ExprError(close.start, f"expected ')', got {_shown(close)}")
            return Syntax(inner.kind, token.start, close.end, inner.args, inner.value, inner.at)
        if token.text == "{":
            return self.set_literal(token)
        if token.kind == "name" and token.text not in KEYWORDS:
            return self.field(token)
        if token.kind == "end":
            raise ExprError(token.start, "the rule ends too early: expected a value")
        if token.text == ")":
            raise ExprError(token.start, "unbalanced parentheses: this ')' closes nothing")
        raise ExprError(token.start, f"expected a value, got {_shown(token)}")

    def set_literal(self, opening: Token) -> Syntax:
        items: list[str] = []
        if self.peek().text == "}":
            return Syntax("set", opening.start, self.take().end, value=())
        while True:
            token = self.take()
            if token.kind != "string":
                raise ExprError(token.start, f"a set holds strings, got {_shown(token)}")
            items.append(token.text[1:-1])
            token = self.take()
            if token.text == "}":
                return Syntax("set", opening.start, token.end, value=tuple(items))
            if token.text != ",":
                if token.kind == "end":
                    raise ExprError(opening.start, "unbalanced braces: this '{' is never closed")
                raise ExprError(token.start, f"expected ',' or '}}', got {_shown(token)}")

    def field(self, first: Token) -> Syntax:
        names = [first.text]
        end = first.end
        while self.peek().text == "." and self.peek().start == end:
            dot, name = self.take(), self.take()
            if name.kind != "name" or name.start != dot.end:
                raise ExprError(dot.start, "expected a field name right after '.'")
            names.append(name.text)
            end = name.end
        if self.peek().text == "(":
            raise ExprError(
                first.start,
                f"calls are not part of the invariant language: {'.'.join(names)}(...)",
            )
        key = None
        if self.peek().text == "[":
            opening = self.take()
            token = self.take()
            if token.kind != "string":
                raise ExprError(token.start, f"a label key is a quoted string, got {_shown(token)}")
            key = token.text[1:-1]
            close = self.take()
            if close.text != "]":
                raise ExprError(opening.start, "unbalanced brackets: this '[' is never closed")
            end = close.end
        return Syntax("field", first.start, end, value=(".".join(names), key))


_COMPARISONS = frozenset(op for op, (power, _) in _BINARY.items() if power == _COMPARE_POWER)


def _shown(token: Token) -> str:
    return "the end of the rule" if token.kind == "end" else repr(token.text)


def parse(text: str) -> Syntax:
    """The syntax tree of `text`; :class:`ExprError` at the first problem."""
    return _Parser(text).parse()


# ----------------------------------------------------------------------------- the types


@dataclass(frozen=True, eq=False)
class Expr:
    """A type-checked node. `op` is "const", "field", "not", "and", "or", "implies",
    "==", "!=", "<", "<=", ">", ">=", "in", "subset" or "+"; a field's `value` is its path
    (and `key` the label key); `start`..`end` is its text in the rule."""

    op: str
    type: Type
    start: int
    end: int
    args: tuple[Expr, ...] = ()
    value: Any = None
    key: str | None = None
    fields: frozenset[str] = field(default=frozenset())  # every field it reads, as written


def field_name(path: str, key: str | None) -> str:
    return f'{path}["{key}"]' if key is not None else path


class _Checker:
    def __init__(self, text: str, vocabulary: Vocabulary) -> None:
        self.text = text
        self.vocabulary = vocabulary
        self.errors: list[ExprError] = []

    def fail(self, offset: int, message: str) -> Expr:
        self.errors.append(ExprError(offset, message))
        return Expr("error", Type("error"), offset, offset)

    def source(self, node: Syntax | Expr) -> str:
        return self.text[node.start : node.end]

    def check(self, node: Syntax) -> Expr:
        if node.kind == "const":
            value = node.value
            kind = BOOL if isinstance(value, bool) else NUM if isinstance(value, float) else STR
            return Expr("const", kind, node.start, node.end, value=value)
        if node.kind == "set":
            return Expr("const", SET, node.start, node.end, value=frozenset(node.value))
        if node.kind == "field":
            return self.check_field(node)
        args = [self.check(arg) for arg in node.args]
        if any(arg.op == "error" for arg in args):
            return Expr("error", Type("error"), node.start, node.end)
        reads = frozenset().union(*(arg.fields for arg in args))
        if node.kind in ("not", "and", "or", "implies", "=>"):
            for arg in args:
                if arg.type != BOOL:
                    return self.fail(
                        arg.start,
                        f"'{_word(node.kind)}' needs true or false, but "
                        f"{self.source(arg)} is {arg.type.describe()}",
                    )
            op = "implies" if node.kind == "=>" else node.kind
            flat: list[Expr] = []
            for arg in args:  # and/or of and/or: one n-ary node
                flat.extend(arg.args if arg.op == op and op in ("and", "or") else [arg])
            return Expr(op, BOOL, node.start, node.end, tuple(flat), fields=reads)
        left, right = args
        if node.kind == "contains":
            left, right = right, left
        checked = self.check_binary(node, left, right)
        if checked.op == "error":
            return checked
        return Expr(
            checked.op,
            checked.type,
            node.start,
            node.end,
            checked.args,
            checked.value,
            fields=reads,
        )

    def check_field(self, node: Syntax) -> Expr:
        path, key = node.value
        at = node.start
        if path not in FIELDS:
            if path in ("node", "task", "inputs", "usage", "quota"):
                fields = [name for name in FIELDS if name.startswith(f"{path}.")]
                shown = ", ".join(field_name(f, "key") if f == LABELS else f for f in fields)
                return self.fail(at, f"{path} is not a value: use one of {shown}")
            match = _suggest(path, list(FIELDS))
            hint = (
                f"; did you mean {match!r}?"
                if match
                else "; fields are tenant, action, node.*, task.*, inputs.*, usage.* and quota.*"
            )
            return self.fail(at, f"unknown field {path!r}{hint}")
        if path == LABELS:
            if key is None:
                return self.fail(at, 'node.labels needs a key: node.labels["key"]')
            if key == "region":
                return self.fail(at, 'use node.region, not node.labels["region"]')
            if not _LABEL_KEY.fullmatch(key):
                return self.fail(at, f"{key!r} is not a valid label key")
        elif key is not None:
            return self.fail(at, f"only node.labels takes a key; {path} does not")
        name = field_name(path, key)
        return Expr(
            "field",
            FIELDS[path],
            node.start,
            node.end,
            value=path,
            key=key,
            fields=frozenset({name}),
        )

    def check_binary(self, node: Syntax, left: Expr, right: Expr) -> Expr:
        op = node.kind
        found = len(self.errors)
        shown = f"{self.source(left)} ({left.type.describe()})"
        shown_right = f"{self.source(right)} ({right.type.describe()})"
        if op == "+" or op in ("<", "<=", ">", ">="):
            for arg in (left, right):
                if arg.type != NUM:
                    return self.fail(
                        arg.start,
                        f"'{op}' needs numbers, but {self.source(arg)} is {arg.type.describe()}",
                    )
            self.not_constant(node, left, right)
            result = NUM if op == "+" else BOOL
            return Expr(op, result, node.start, node.end, (left, right))
        if op in ("==", "!="):
            if left.type.kind != right.type.kind:
                hint = ""
                if left.type.kind == "set" and right.type.kind == "str":
                    hint = f"; did you mean {self.source(right)} in {self.source(left)}?"
                elif left.type.kind == "str" and right.type.kind == "set":
                    hint = f"; did you mean {self.source(left)} in {self.source(right)}?"
                return self.fail(node.at, f"'{op}' cannot compare {shown} with {shown_right}{hint}")
            self.unify(node, left, right)
        elif op in ("in", "not in", "contains"):
            element, group = left, right
            if group.type.kind != "set" or element.type.kind != "str":
                hint = ""
                if group.type.kind == "str" and element.type.kind == "str":
                    hint = "; did you mean '=='?"
                elif group.type.kind == "set" and element.type.kind == "set":
                    hint = "; did you mean 'subset'?"
                word = "contains" if op == "contains" else op
                return self.fail(
                    node.at,
                    f"'{word}' needs a string and a set, got {self.source(element)} "
                    f"({element.type.describe()}) and {self.source(group)} "
                    f"({group.type.describe()}){hint}",
                )
            self.unify(node, element, group)
        elif op == "subset":
            if left.type.kind != "set" or right.type.kind != "set":
                return self.fail(node.at, f"'subset' needs two sets, got {shown} and {shown_right}")
            self.unify(node, left, right)
        if len(self.errors) > found:
            return Expr("error", Type("error"), node.start, node.end)
        if op == "not in":
            inner = Expr("in", BOOL, node.start, node.end, (left, right))
            return Expr("not", BOOL, node.start, node.end, (inner,))
        return Expr("in" if op == "contains" else op, BOOL, node.start, node.end, (left, right))

    def not_constant(self, node: Syntax, left: Expr, right: Expr) -> None:
        if left.op == "const" and right.op == "const":
            self.fail(
                node.at,
                f"'{self.source(left)} {node.kind} {self.source(right)}' compares two "
                "constants: it does not depend on the dispatch",
            )

    def unify(self, node: Syntax, left: Expr, right: Expr) -> None:
        """Strings on both sides name the same kind of thing; a literal is one of the
        policy's names of that kind."""
        self.not_constant(node, left, right)
        if left.type.kind in ("bool", "num"):
            return
        domains = {left.type.domain, right.type.domain} - {""}
        if len(domains) > 1:
            self.fail(
                node.at,
                f"'{node.kind}' cannot compare {self.source(left)} "
                f"({left.type.describe()}) with {self.source(right)} "
                f"({right.type.describe()})",
            )
            return
        if not domains:
            return
        (domain,) = domains
        known = self.vocabulary.names(domain)
        if known is None:
            return
        for literal in (left, right):
            if literal.op == "const":
                self.check_names(literal, domain, known)

    def check_names(self, literal: Expr, domain: str, known: Sequence[str]) -> None:
        values = sorted(literal.value) if isinstance(literal.value, frozenset) else [literal.value]
        for value in values:
            if value in known:
                continue
            noun = _DOMAIN_NOUNS[domain].removesuffix(" name")
            offset = literal.start
            if isinstance(literal.value, frozenset):
                found = self.text.find(f'"{value}"', literal.start, literal.end)
                found = found if found >= 0 else self.text.find(f"'{value}'", literal.start)
                offset = found if found >= 0 else offset
            match = _suggest(value, known)
            if match:
                hint = f"; did you mean {match!r}?"
            elif known:
                hint = f" (declared: {', '.join(known)})"
            else:
                hint = " (the policy declares none)"
            self.fail(offset, f"unknown {noun} {value!r}{hint}")


def _word(kind: str) -> str:
    return "implies" if kind == "=>" else kind


def _suggest(word: str, choices: Sequence[str]) -> str | None:
    for choice in choices:
        if choice.casefold() == word.casefold():
            return choice
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.7)
    return matches[0] if matches else None


def check(text: str, vocabulary: Vocabulary) -> Expr:
    """The typed tree of the rule `text`, which must be true or false; raises
    :class:`ExprErrors` with the syntax error, or with every type error."""
    try:
        syntax = parse(text)
    except ExprError as error:
        raise ExprErrors([error]) from None
    checker = _Checker(text, vocabulary)
    expr = checker.check(syntax)
    if not checker.errors and expr.type != BOOL:
        checker.fail(
            expr.start,
            f"a rule must be true or false, but {checker.source(expr)} is {expr.type.describe()}",
        )
    if checker.errors:
        raise ExprErrors(checker.errors)
    return expr


class ExprErrors(Exception):
    """Every type error found in one rule, in the order found."""

    def __init__(self, errors: Sequence[ExprError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = list(errors)

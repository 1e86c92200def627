"""Read the ``parameters`` and ``outputs`` cells with ``ast``, following papermill's conventions.

papermill's own reader (``inspect_notebook``) is a line regex that drops ``Literal``,
``int | None`` and dotted types, and skips ``x = dict(a=1)``; this one parses the cell as
Python, so every statement is either understood or reported with its line.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .notebook import Cell
from .types import Type, TypeNotSupported, check_value, infer_from_value, parse_annotation

_MISSING: Any = object()


@dataclass(frozen=True)
class Declaration:
    """One ``name: type = value  # help`` line of a parameters or outputs cell."""

    name: str
    type: Type
    line: int  # 1-based, within the cell
    help: str = ""
    required: bool = False
    default: Any = _MISSING  # the literal default, if the value is a literal
    default_source: str = ""  # the value as written

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING


def _comments(source: str) -> dict[int, str]:
    """Line number → text of the comment on that line."""
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass  # ast.parse has already accepted the source; a tokenizer quirk only loses help text
    return out


def _help(comment: str) -> str:
    """The help text of a line's comment: after a PEP 484 ``# type: T`` comment, the next ``#`` starts it."""
    if comment.startswith("type:"):
        return comment.partition("#")[2].strip()
    return comment


def _parse(cell: Cell, nb_name: str, what: str) -> ast.Module:
    try:
        # type_comments: papermill reads `rate = 1  # type: float` as a float, and so does nb2svc
        return ast.parse(cell.source, type_comments=True)
    except SyntaxError as e:
        raise SpecError(
            f"{nb_name}: {what} cell (cell {cell.number}, line {e.lineno}): syntax error: {e.msg}",
            "the cell must be plain Python: one `name: type = value` per line",
        ) from None


def check_syntax(cell: Cell, nb_name: str) -> None:
    """Compile a code cell as the kernel will, after IPython's transforms (``%magic``, ``!cmd``, ``%%cell``)."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT  # top-level await is valid in a Jupyter cell
    try:
        compile(cell.source, f"<cell {cell.number}>", "exec", flags=flags, dont_inherit=True)
        return  # plain Python: IPython's transforms leave it as it is, and IPython (0.4 s to import) is not needed
    except SyntaxError:
        pass
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        python = TransformerManager().transform_cell(cell.source)
        compile(python, f"<cell {cell.number}>", "exec", flags=flags, dont_inherit=True)
    except SyntaxError as e:
        raise SpecError(
            f"{nb_name}: cell {cell.number}, line {e.lineno}: syntax error: {e.msg}",
            "fix the cell so that it runs in Jupyter; every code cell is compiled before the service starts",
        ) from None


def _where(nb_name: str, what: str, cell: Cell, line: int) -> str:
    return f"{nb_name}: {what} (cell {cell.number}, line {line})"


def _help_and_required(text: str) -> tuple[str, bool]:
    low = text.lower()
    if low == "required" or low.startswith(("required:", "required ", "required,", "required;")):
        return text[len("required") :].lstrip(":,; ").strip(), True
    return text, False


def read_parameters(cell: Cell, nb_name: str) -> list[Declaration]:
    """Every parameter of the ``parameters`` cell, typed; anything untypable is a SpecError."""
    tree = _parse(cell, nb_name, "parameters")
    comments = _comments(cell.source)
    decls: list[Declaration] = []
    seen: dict[str, int] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom) or (
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        ):
            continue  # imports and docstrings are allowed and are not parameters
        target, annotation, value = _assignment(stmt, nb_name, cell)
        if target is None:
            raise SpecError(
                f"{_where(nb_name, 'parameters', cell, stmt.lineno)}: "
                f"`{ast.unparse(stmt).splitlines()[0]}` is not a parameter assignment",
                "the parameters cell holds one `name: type = value` per line; move other code to the next cell",
            )
        where = f"{_where(nb_name, 'parameter ' + repr(target), cell, stmt.lineno)}"
        if target in seen:
            raise SpecError(f"{where}: assigned twice (first on line {seen[target]})", "keep one assignment")
        seen[target] = stmt.lineno
        help_text, required = _help_and_required(_help(comments.get(stmt.end_lineno or stmt.lineno, "")))
        if value is None:
            raise SpecError(
                f"{where}: has no default value",
                "give it an example value so the notebook runs top to bottom, and mark it `# required`",
            )
        default = _literal(value)
        decls.append(
            Declaration(
                name=target,
                type=_type_of(where, annotation, default),
                line=stmt.lineno,
                help=help_text,
                required=required,
                default=default,
                default_source=ast.unparse(value),
            )
        )
    return decls


def read_outputs(cell: Cell, nb_name: str) -> list[Declaration]:
    """The annotated assignments of the ``outputs`` cell; other statements are left alone."""
    tree = _parse(cell, nb_name, "outputs")
    comments = _comments(cell.source)
    decls: list[Declaration] = []
    for stmt in tree.body:
        target, annotation, _ = _assignment(stmt, nb_name, cell)
        if target is None:
            continue
        where = _where(nb_name, f"output {target!r}", cell, stmt.lineno)
        if annotation is None:
            raise SpecError(f"{where}: has no type annotation", f"write it as `{target}: <type> = ...`")
        if any(d.name == target for d in decls):
            raise SpecError(f"{where}: declared twice", "keep one declaration per output")
        decls.append(
            Declaration(
                name=target,
                type=_type_of(where, annotation, _MISSING),
                line=stmt.lineno,
                help=_help(comments.get(stmt.end_lineno or stmt.lineno, "")),
            )
        )
    if not decls:
        raise SpecError(
            f"{nb_name}: outputs cell (cell {cell.number}) declares nothing",
            "write the response values as `name: type = value` lines",
        )
    return decls


def _assignment(stmt: ast.stmt, nb_name: str, cell: Cell) -> tuple[str | None, ast.expr | None, ast.expr | None]:
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return stmt.target.id, stmt.annotation, stmt.value
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        name = stmt.targets[0].id
        return name, _type_comment(stmt.type_comment, _where(nb_name, repr(name), cell, stmt.lineno)), stmt.value
    return None, None, None


def _type_comment(comment: str | None, where: str) -> ast.expr | None:
    """The annotation a PEP 484 ``# type: T`` comment gives (a second ``#`` starts the help text)."""
    if comment is None:
        return None
    text = comment.partition("#")[0].strip()
    try:
        return ast.parse(text, mode="eval").body
    except SyntaxError:
        raise SpecError(
            f"{where}: `# type: {text}` is not a type",
            "write a type after `# type:` (e.g. `# type: float`), or annotate the line: `name: float = ...`",
        ) from None


def _literal(node: ast.expr) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _MISSING
    return list(value) if isinstance(value, tuple) else value


def _type_of(where: str, annotation: ast.expr | None, default: Any) -> Type:
    if annotation is None:
        if default is _MISSING:
            raise SpecError(
                f"{where}: its type cannot be known: it has no annotation and its value is not a literal",
                "annotate it, e.g. `name: int = ...`",
            )
        try:
            return infer_from_value(default)
        except TypeNotSupported as e:
            example = "`name: Optional[str] = None`" if default is None else "`name: list[int] = []`"
            raise SpecError(f"{where}: {e}", f"annotate it, e.g. {example}") from None
    try:
        t = parse_annotation(annotation)
    except TypeNotSupported as e:
        raise SpecError(
            f"{where}: {e}",
            "use int, float, bool, str, Path, list[T], dict[str, T], Optional[T], Literal[...], list, dict or Any",
        ) from None
    if default is not _MISSING and not check_value(t, default):
        raise SpecError(
            f"{where}: the default {default!r} does not fit the annotation {t.python()}",
            "fix the value or the annotation",
        )
    return t

"""
The repository's own rules, read from the files (no code runs): lines and statements, function size and
nesting, imports of private names, absolute paths, the docs and result files that the text cites, the README's
file table.
    python -m pytest -q test_lint.py
"""
import ast
import os
import re

from conftest import ROOT

MAX_COLUMNS = 110        # outside the tests
MAX_FUNCTION_LINES = 80  # a function a reader takes in at once (the Triton kernels excepted)
MAX_DEPTH = 4            # if / for / while / with / try blocks inside one another, within a function
# (file, function) allowed over the limits while it waits to be split: each must still be over (strike it once
# split), and nothing else may be
PENDING: set = set()
BLOCKS = (ast.If, ast.For, ast.While, ast.With, ast.Try, ast.AsyncFor, ast.AsyncWith, ast.Match, ast.TryStar)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def repository_files(*endings):
    """the repository's files with these endings, as paths relative to ROOT (no run outputs, no caches)"""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in ("out", "__pycache__") and not d.startswith(("out-", ".venv"))
                         and d not in (".git", ".pytest_cache", ".mypy_cache"))
        found += [os.path.relpath(os.path.join(folder, f), ROOT) for f in sorted(files) if f.endswith(endings)]
    return found


def is_test(path):
    name = os.path.basename(path)
    return name.startswith("test_") or name == "conftest.py"


def source_files():
    return [p for p in repository_files(".py") if not is_test(p)]


def parse(path, root=ROOT):
    with open(os.path.join(root, path), encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def depth(node, level=0):
    """how deep blocks nest inside `node` (an elif is the same level as its if; a nested def starts anew)"""
    deepest = level
    for field, value in ast.iter_fields(node):
        children = value if isinstance(value, list) else [value]
        for child in children:
            if not isinstance(child, ast.AST) or isinstance(child, SCOPES):
                continue
            elif_ = isinstance(node, ast.If) and field == "orelse" and len(children) == 1 and isinstance(child, ast.If)
            deeper = isinstance(child, BLOCKS) and not elif_
            deepest = max(deepest, depth(child, level + deeper))
    return deepest


def oversized(path, root=ROOT):
    """{function name: what is over} for the functions of `path` over MAX_FUNCTION_LINES or MAX_DEPTH"""
    over = {}
    for node in ast.walk(parse(path, root)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if any("jit" in ast.unparse(d) for d in node.decorator_list):  # a Triton kernel: one program, unsplit
            continue
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES or depth(node) > MAX_DEPTH:
            over[node.name] = f"{lines} lines, {depth(node)} deep"
    return over


def test_depth_counts_blocks_not_elifs_or_nested_functions():
    code = ("def f(x):\n    if x:\n        for i in x:\n            pass\n    elif x:\n        pass\n"
            "    def g():\n        with x:\n            with x:\n                with x:\n                    pass\n")
    f = ast.parse(code).body[0]
    assert depth(f) == 2 and depth(f.body[-1]) == 3


def test_no_line_is_longer_than_110_columns_outside_the_tests():
    long = []
    for path in source_files() + repository_files(".sh"):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            long += [f"{path}:{i}" for i, line in enumerate(f, 1) if len(line.rstrip("\n")) > MAX_COLUMNS]
    assert not long, long


def test_one_statement_per_line():
    packed = []
    for path in repository_files(".py"):
        for node in ast.walk(parse(path)):
            for field in ("body", "orelse", "finalbody"):
                block = getattr(node, field, None)
                if not isinstance(block, list) or not block or not isinstance(block[0], ast.stmt):
                    continue
                packed += [f"{path}:{b.lineno}" for a, b in zip(block, block[1:]) if b.lineno == a.end_lineno]
                if isinstance(node, ast.stmt) and field == "body" and block[0].lineno == node.lineno:
                    packed.append(f"{path}:{node.lineno}")  # `if x: y`
    assert not packed, packed


def test_functions_are_short_and_shallow_outside_the_kernels():
    over = {(path, name): what for path in source_files() for name, what in oversized(path).items()}
    assert set(over) - PENDING == set(), {k: v for k, v in over.items() if k not in PENDING}
    assert PENDING - set(over) == set(), "split: strike these from PENDING"


def test_the_checks_catch_a_long_or_deep_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    deep = "def deep(x):\n" + "".join("    " * (i + 1) + "if x:\n" for i in range(MAX_DEPTH + 1)) + "    " * 6 + "pass\n"
    (tmp_path / "bad.py").write_text("def long():\n" + body + deep + "def fine(x):\n    return x\n")
    assert set(oversized("bad.py", str(tmp_path))) == {"long", "deep"}


def test_no_module_reaches_for_another_module_s_private_names():
    local = {os.path.splitext(p)[0] for p in repository_files(".py") if os.sep not in p}
    found = []
    for path in source_files():
        tree = parse(path)
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                    if a.name in local}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in local:
                found += [f"{path}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    found.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found, found


def test_no_absolute_paths_of_a_machine():
    found = []
    for path in repository_files(".py", ".md", ".sh", ".txt", ".csv", ".cpp"):
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            found += [f"{path}:{i}" for i, line in enumerate(f, 1)
                      if re.search(r"(^|[\s\"'(=:])/(home|Users|work|root|mnt|scratch)/", line)]
    assert not found, found


def test_repository_cites_only_files_and_sections_it_holds():
    cited = set()
    for path in repository_files(".py", ".md", ".sh"):
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        cited |= set(re.findall(r"\b(docs/[\w.-]+\.md)((?: ?§[\d.]+(?:-§?[\d.]+)?)?)", text))
    assert cited, "no citations found: the pattern is wrong"
    for path, sections in cited:
        assert os.path.isfile(os.path.join(ROOT, path)), f"{path} is cited but not in the repository"
        doc = open(os.path.join(ROOT, path), encoding="utf-8").read()
        for number in re.findall(r"[\d.]+", sections):
            assert re.search(rf"^#+ §{re.escape(number.rstrip('.'))}\b", doc, re.M), f"{path} has no §{number}"
    text = open(os.path.join(ROOT, "README.md")).read() + open(os.path.join(ROOT, "RESULTS.md")).read()
    assert "../shared" not in text and "shared/docs" not in text


def test_readme_and_results_cite_only_result_files_the_repository_holds():
    # every number in README.md and RESULTS.md comes from a file under results/: the files they name exist
    # (results/paper_table3.md is what results/paper.sh writes on a GPU machine: named, not yet made)
    missing = []
    for name in ("README.md", "RESULTS.md"):
        text = open(os.path.join(ROOT, name), encoding="utf-8").read()
        for path in set(re.findall(r"\bresults/[\w.-]+\.(?:md|csv|png|txt|sh|py)\b", text)):
            if path != "results/paper_table3.md" and not os.path.isfile(os.path.join(ROOT, path)):
                missing.append(f"{name}: {path}")
    assert not missing, missing


def test_readme_file_table_names_every_top_level_file():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = re.search(r"^\| file \| what it holds \|\n(.*?)\n\n", readme, re.S | re.M).group(1)
    named = set(re.findall(r"`([\w./-]+)`", table))
    files = [p for p in repository_files(".py", ".cpp") if os.sep not in p]
    assert not [f for f in files if f not in named], "add them to README.md's file table"
    assert not [f for f in named if f.endswith((".py", ".cpp")) and "/" not in f and f not in files]

"""The docs hold to the code: their commands name files, configs and flags that exist, their
links and images resolve, and the README's results table quotes docs/RESULTS.md."""

import ast
import functools
import importlib.util
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "docs/RESULTS.md", "docs/USAGE.md", "docs/PERF.md")
# Where commands are checked: every doc a user copies commands from. notebook.md is a dated log.
LINKED = DOCS + ("docs/notebook.md", "bench/studies/README.md")
ABSL_BUILTIN = {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok", "verbosity",
                "v", "logtostderr", "alsologtostderr", "only_check_args"}


def read(path: str) -> str:
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


def commands(path: str) -> list[list[str]]:
  """The shell commands of a doc's ```bash blocks: continuation lines joined, comments and
  leading VAR=value assignments dropped, split into words."""
  out = []
  for block in re.findall(r"```bash\n(.*?)```", read(path), re.S):
    for line in block.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True)
      while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
      if words:
        out.append(words)
  return out


def module_file(name: str) -> str:
  path = os.path.join(ROOT, *name.split("."))
  for candidate in (path + ".py", os.path.join(path, "__main__.py")):
    if os.path.exists(candidate):
      return candidate
  raise AssertionError(f"python -m {name}: no such module in the repository")


@functools.cache
def defined_flags(path: str) -> frozenset:
  """The absl flags a program defines (DEFINE_x("name", ...) or (flags.DEFINE_x, "name", ...)),
  read from its source: importing it would define them in this process."""
  with open(path, encoding="utf-8") as f:
    return frozenset(re.findall(r"DEFINE_\w+(?:\(|,)\s*\"(\w+)\"", f.read()))


@functools.cache
def load_config(spec: str):
  """configs/x.py[:args] loaded as config_flags does: the file's get_config(args)."""
  path, _, arg = spec.partition(":")
  assert os.path.exists(os.path.join(ROOT, path)), f"--config={spec}: no file {path}"
  loader = importlib.util.spec_from_file_location(f"_doc_config_{abs(hash(path))}",
                                                  os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  return module.get_config(arg or None) if arg else module.get_config()


def check_python(words: list[str], where: str) -> None:
  if words[1] == "-m":
    program, args = module_file(words[2]), words[3:]
  else:
    program, args = os.path.join(ROOT, words[1]), words[2:]
    assert os.path.exists(program), f"{where}: no file {words[1]}"
  known = defined_flags(program)
  config = None
  for arg in args:
    if not arg.startswith("--"):
      continue  # a positional argument, or the placeholder "..."
    name, _, value = arg[2:].partition("=")
    if name == "config":
      config = load_config(value)
    elif name.startswith("config."):
      assert config is not None, f"{where}: {arg} before --config"
      node = config
      for key in name.split(".")[1:]:
        assert key in node, f"{where}: {arg}: the config has no {key!r} there"
        node = node[key]
    else:
      bare = name[2:] if name.startswith("no") else name
      assert name in known or bare in known or name in ABSL_BUILTIN, (
          f"{where}: {arg}: {os.path.relpath(program, ROOT)} defines no such flag")


def make_targets() -> set:
  return set(re.findall(r"^([a-z][\w-]*):", read("Makefile"), re.M))


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_names_files_configs_and_flags_that_exist(doc):
  checked = 0
  for words in commands(doc):
    where = f"{doc}: {' '.join(words)[:80]}"
    if os.path.basename(words[0]).startswith("python"):
      check_python(words, where)
    elif words[0] == "make":
      assert set(w for w in words[1:] if "=" not in w) <= make_targets(), where
    elif words[0] == "bash":
      assert os.path.exists(os.path.join(ROOT, words[1])), where
    elif words[:2] == ["pip", "install"]:
      assert os.path.exists(os.path.join(ROOT, words[words.index("-r") + 1])), where
    else:
      continue  # gcloud, tfds and the like: not this repository's
    checked += 1
  assert checked, f"{doc} has no command to check"


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", LINKED)
def test_every_link_and_image_resolves(doc):
  text = re.sub(r"```.*?```", "", read(doc), flags=re.S)
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if target.startswith(("http://", "https://")):
      continue
    path, _, anchor = target.partition("#")
    file = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
    assert os.path.exists(os.path.join(ROOT, file)), f"{doc}: {target} does not exist"
    if anchor:
      headings = re.findall(r"^#+ (.*)$", read(file), re.M)
      assert anchor in {slug(h) for h in headings}, f"{doc}: no heading #{anchor} in {file}"


def readme_results_rows() -> list[str]:
  section = read("README.md").split("## Results at laptop scale", 1)[1].split("\n## ", 1)[0]
  rows = [line for line in section.splitlines() if line.startswith("| ")]
  return [row for row in rows[1:] if not row.startswith("|---")]  # no header, no rule


def test_every_number_in_the_readme_results_table_is_in_results():
  results = read("docs/RESULTS.md")
  rows = readme_results_rows()
  assert len(rows) >= 6
  for row in rows:
    cells = row.strip("|").split("|")[:-1]  # the last cell is the link to the section
    for number in re.findall(r"\d[\d,]*(?:\.\d+)?", " ".join(cells)):
      assert re.search(rf"(?<![\d.]){re.escape(number)}(?![\d])", results), (
          f"README results table: {number} (row {row[:60]}...) is not in docs/RESULTS.md")


def test_the_method_table_points_at_code_that_exists():
  refs = re.findall(r"`(infini_jax/[\w/]+\.py):([\w.]+)`", read("README.md"))
  assert len(refs) >= 6
  for path, qualname in refs:
    tree = ast.parse(read(path))
    names = qualname.split(".")
    scope = tree.body
    for name in names:
      found = [n for n in scope if isinstance(n, (ast.ClassDef, ast.FunctionDef))
               and n.name == name]
      assert found, f"README: {path}:{qualname}: no {name}"
      scope = found[0].body


def test_the_readme_keeps_the_aot_markers_under_a_heading():
  text = read("README.md")
  begin, end = text.index("<!-- aot:begin -->"), text.index("<!-- aot:end -->")
  assert begin < end and text.count("<!-- aot:begin -->") == 1
  assert text[:begin].rstrip().splitlines()[-1].startswith("#")


def test_make_help_describes_every_target():
  makefile = read("Makefile")
  phony = set(re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split())
  described = set(re.findall(r"^([a-z][\w-]*):.*## ", makefile, re.M))
  assert phony == described, f"targets without a '## ' line: {sorted(phony - described)}"

"""The layout's rules, checked on the source: one home per concept needs these to stay true.

* No Python file over 600 lines.
* No module of ``mpcgen/`` imports a stage package (``nlg``, ``distill``, ``benchmark``) or a command-line module
  (``mpcgen.cli``, ``mpcgen.generate``), except the command-line modules themselves.
* Plaintext generation never loads CrypTen: ``python -m mpcgen.generate --plaintext`` runs with no crypten module
  imported (checked with ``-X importtime``, as a user would), and neither do the plaintext library entry points.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("mpcgen", "nlg", "distill", "benchmark", "scripts", "tests")
           for p in (REPO_ROOT / d).rglob("*.py")]
CLI_MODULES = ("mpcgen.cli", "mpcgen.generate")
STAGES = ("nlg", "distill", "benchmark")


def test_no_python_file_over_600_lines() -> None:
    long = {str(p.relative_to(REPO_ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_imports_no_stage_and_no_cli() -> None:
    bad = {}
    for path in (REPO_ROOT / "mpcgen").rglob("*.py"):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module.startswith(CLI_MODULES):
            continue
        wrong = {name for name in _imports(path) if name.split(".")[0] in STAGES or name.startswith(CLI_MODULES)}
        if wrong:
            bad[module] = sorted(wrong)
    assert not bad, bad


def test_plaintext_generation_imports_no_crypten(tmp_path) -> None:
    from mpcgen.models import save_pretrained
    from mpcgen.models.geometry import geometry_config, random_model
    from mpcgen.tokenization import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["name[The Eagle] food[French]", "The Eagle serves French food."], vocab_size=300)
    config = geometry_config(preset="mpcformer", layers=1, d_model=16, heads=2, vocab=len(tokenizer), positions=64)
    save_pretrained(random_model(config), tmp_path / "model", tokenizer=tokenizer)
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "mpcgen.generate", "--model",
                          str(tmp_path / "model"), "--prompt", "name[The Eagle]", "--plaintext", "--max-new-tokens",
                          "3", "--no-progress", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = [line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert "mpcgen.generation.loop" in imported  # the probe sees our modules
    assert not [m for m in imported if m.split(".")[0] == "crypten"], "the plaintext path imported CrypTen"


PLAINTEXT_MODULES = ("mpcgen.generation", "mpcgen.generation.texts", "mpcgen.evaluation", "mpcgen.mpc.costs",
                     "mpcgen.mpc.roles", "mpcgen.models.loading", "mpcgen.models.geometry", "mpcgen.cli")


def test_plaintext_modules_do_not_load_crypten() -> None:
    code = (f"import importlib, sys\nfor m in {PLAINTEXT_MODULES!r}: importlib.import_module(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'crypten'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

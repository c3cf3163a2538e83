"""The lean install: commands that need an extra name its pip line before anything loads; the package imports
without the extras; ranx's numba warning never reaches the user."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from native_retriever.cli import main
from native_retriever.errors import MissingExtraError
from native_retriever.extras import EXTRAS, require

EXTRA_PACKAGES = ("ranx", "peft", "matplotlib")


@pytest.fixture
def nothing_loads(monkeypatch):
    """Make every data and model loader fail the test if called."""
    import importlib

    import native_retriever.embedder
    import native_retriever.heads
    import native_retriever.latent
    import native_retriever.teacher

    def loaded(*args, **kwargs):
        raise AssertionError("something loaded before the extras were checked")

    # the loaders, patched in every module that imports them by name (imported here first, so none of them keeps
    # the stand-in after the test)
    names = ("data", "models", "evaluation", "training.pipeline", "latent.training")
    for module in [importlib.import_module(f"native_retriever.{name}") for name in names]:
        for loader in ("load_data", "load_llm"):
            if hasattr(module, loader):
                monkeypatch.setattr(module, loader, loaded)
    monkeypatch.setattr(native_retriever.teacher.Teacher, "from_pretrained", loaded)
    monkeypatch.setattr(native_retriever.heads.ProjectionHead, "from_pretrained", loaded)
    monkeypatch.setattr(native_retriever.embedder.NativeEmbedder, "from_pretrained", loaded)
    monkeypatch.setattr(native_retriever.latent.LatentEmbedder, "from_pretrained", loaded)


def _uninstall(monkeypatch, *packages: str) -> None:
    """Simulate packages that are not installed (``import`` and ``find_spec`` both see them missing)."""
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def test_require_names_the_missing_package_and_the_pip_line(monkeypatch):
    require("eval")  # installed here: nothing happens
    _uninstall(monkeypatch, "ranx")
    with pytest.raises(MissingExtraError) as info:
        require("eval", what="Evaluation")
    assert str(info.value) == 'Evaluation needs ranx, which is not installed: pip install "native-retriever[eval]"'
    require("latent", "peft")  # only the packages asked for are checked
    with pytest.raises(ValueError, match="Unknown extra"):
        require("plots")


@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["eval", "--data", "DATA"], "ranx", "eval"),
        (["eval", "--data", "DATA", "--systems", "latent", "--latent-adapter", "ADAPTER"], "peft", "latent"),
        (["compare", "a.trec", "b.trec", "--data", "DATA"], "ranx", "eval"),
        (["train-head", "--train", "DATA", "--dev", "DATA", "-o", "OUT"], "ranx", "train"),
        (["train-latent", "--train", "DATA", "-o", "OUT"], "peft", "latent"),
    ],
)
def test_a_command_without_its_extra_exits_2_with_the_pip_line_before_anything_loads(
    argv, missing, extra, tiny_data_folder, tmp_path, monkeypatch, nothing_loads, capsys
):
    argv = [tiny_data_folder if a == "DATA" else str(tmp_path / a) if a in ("OUT", "ADAPTER") else a for a in argv]
    _uninstall(monkeypatch, missing)
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert missing in error and f'pip install "native-retriever[{extra}]"' in error, error
    assert not (tmp_path / "OUT").exists()


def test_every_extra_is_in_dev_and_pyproject():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    base = {d.split(">")[0].split("=")[0] for d in project["dependencies"]}
    assert not base & set(EXTRA_PACKAGES)
    optional = project["optional-dependencies"]
    dev = {d.split(">")[0] for d in optional["dev"]}
    for extra, modules in EXTRAS.items():
        assert {d.split(">")[0] for d in optional[extra]} == set(modules)
        assert set(modules) <= dev, f"[dev] lacks the [{extra}] packages"


def test_the_package_and_its_commands_import_without_the_extras(tiny_data_folder):
    """A fresh interpreter in which ranx, peft and matplotlib cannot be imported."""
    script = (
        "import sys\n"
        f"for name in {EXTRA_PACKAGES!r}:\n"
        "    sys.modules[name] = None\n"
        "import native_retriever, native_retriever.cli, native_retriever.evaluation, native_retriever.training\n"
        "import native_retriever.training.trainer, native_retriever.training.cache, native_retriever.latent\n"
        "import native_retriever.latent.training, native_retriever.agent\n"
        "from native_retriever.cli import build_parser, main\n"
        "build_parser()\n"
        f"sys.exit(main(['eval', '--data', {tiny_data_folder!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert 'needs ranx, which is not installed: pip install "native-retriever[eval]"' in result.stderr


def test_ranx_numba_warning_is_not_shown(monkeypatch, tmp_path):
    """numba warns while it compiles ranx's metrics (the first eval on a machine): the user never sees it."""
    import ranx
    from numba.core.errors import NumbaTypeSafetyWarning

    from native_retriever.evaluation import compare_runs, retrieval_metrics, save_run

    def noisy(function):
        def wrapper(*args, **kwargs):
            warnings.warn("unsafe cast from uint64 to int64.", NumbaTypeSafetyWarning, stacklevel=2)
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(ranx, "evaluate", noisy(ranx.evaluate))
    monkeypatch.setattr(ranx, "compare", noisy(ranx.compare))
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    runs = {"a": {"q1": {"d1": 0.5, "d3": 0.2}, "q2": {"d3": 0.1}}, "b": {"q1": {"d3": 0.4}, "q2": {"d2": 0.3}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert retrieval_metrics(qrels, runs["a"])["recall@10"] == 0.5
        for name, run in runs.items():
            save_run(run, tmp_path / f"{name}.trec", name)
        compare_runs(qrels, [tmp_path / "a.trec", tmp_path / "b.trec"])
    with pytest.warns(NumbaTypeSafetyWarning):  # the patch does warn: outside our calls it is shown
        ranx.evaluate(ranx.Qrels(qrels), ranx.Run(runs["a"]), "recall@10")

"""Tests for the native-retriever command on the tiny LLM, the real teacher and the tiny data folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import append_line

from native_retriever.cli import main
from native_retriever.data import load_data
from native_retriever.heads import HeadConfig, ProjectionHead

DOCS = {
    "festivals.md": "# Zorblat festival\n\nThe Zorblat festival in Quenwick fills the spring nights with paper "
    "lanterns shaped like owls.\n\n# Brisquell dance\n\nIn Ostenfeld the Brisquell dancers balance bowls of water.\n",
    "rivers.md": "# Mirravel river\n\nThe Mirravel river near Dunhollow has purple reeds along its banks.\n",
    "notes.txt": "The Tessaline bridge in Karrowmere has copper railings that sing in the wind.\n",
}


@pytest.fixture(scope="module")
def trained_head(tiny_data_folder, tiny_llm_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = root / "head"
    args = ["train-head", "--train", tiny_data_folder, "--dev", tiny_data_folder, "--output", str(out)]
    args += ["--llm", tiny_llm_folder, "--cache", str(root / "cache"), "--epochs", "2", "--architecture", "linear"]
    args += ["--d-model", "32", "--batch-size", "8", "--max-tokens", "256", "--lr", "0.003", "--rank-top-k", "8"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args) == 0
    (root / "printed.json").write_text(printed.getvalue())  # the report train-head printed, for the tests below
    return out


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-index")
    for name, text in DOCS.items():
        (root / "docs" / name).parent.mkdir(exist_ok=True)
        (root / "docs" / name).write_text(text)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["index", str(root / "docs"), "-o", str(root / "index")]) == 0
    assert f"Indexed 4 passages from {root / 'docs'} into {root / 'index'}." in printed.getvalue()
    return root / "index"


def test_train_head_writes_a_loadable_head_folder(trained_head, tiny_llm_folder, tiny_data_folder):
    assert {"config.json", "head.safetensors", "training_log.json"} <= {p.name for p in trained_head.iterdir()}
    head = ProjectionHead.from_pretrained(trained_head)
    config = head.config
    assert config.architecture == "linear" and config.d_model == 32 and config.output_dim == 384
    assert config.llm["name"] == tiny_llm_folder and config.llm["hidden_size"] == 64
    assert config.teacher["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.prompt_format == {"system_prompt": None, "max_tokens": 256}
    assert len(config.metrics["history"]) == 2
    assert config.metrics["dev"]["data"] == "tiny"
    assert config.training["config"]["epochs"] == 2
    assert json.loads((trained_head / "training_log.json").read_text()) == config.metrics["history"]


def test_train_head_reports_the_bytes_its_cache_takes(trained_head, tiny_data_folder):
    lines = (trained_head.parent / "printed.json").read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # the report, printed after one line per epoch
    report = json.loads("\n".join(lines[start:]))
    assert report["dev"] == ProjectionHead.from_pretrained(trained_head).config.metrics["dev"]
    cache = report["cache"]
    shards = list((trained_head.parent / "cache" / "states").glob("states-*/shard-*.safetensors"))
    on_disk = sum(p.stat().st_size for p in shards)  # train and dev are one folder here: one cache
    assert cache["conversations"] == len(load_data(tiny_data_folder).queries)
    assert cache["bytes"] <= on_disk <= cache["bytes"] + 1024 * len(shards)  # float16 states plus small headers
    assert cache["bytes_per_conversation"] == round(cache["bytes"] / cache["conversations"])


def test_eval_writes_a_json_report(trained_head, tiny_llm_folder, tiny_data_folder, tmp_path, capsys):
    systems = ["bm25-question", "teacher-question", "teacher-history", "native-context"]
    output = tmp_path / "reports" / "eval.json"
    code = main(
        ["eval", "--data", tiny_data_folder, "--llm", tiny_llm_folder, "--head", str(trained_head)]
        + ["--systems", ",".join(systems), "--output", str(output)]
    )
    assert code == 0
    report = json.loads(output.read_text())
    assert list(report["systems"]) == systems
    for name in systems:
        metrics = report["systems"][name]
        assert metrics["queries"] == report["queries"] > 30
        for metric in ("recall@10", "mrr@10", "ndcg@10"):
            assert 0.0 <= metrics[metric] <= 1.0, (name, metric)
    # the teacher sees the topic names in the question, so it finds nearly every passage among 30
    assert report["systems"]["teacher-question"]["recall@10"] >= 0.9
    printed = capsys.readouterr().out
    for name in systems:
        assert name in printed


def test_eval_saves_runs_that_compare_reproduces_and_tests(tiny_data_folder, tmp_path, capsys):
    systems = ["bm25-question", "teacher-question"]
    runs, report_path, comparison = tmp_path / "runs", tmp_path / "eval.json", tmp_path / "compare.json"
    command = ["eval", "--data", tiny_data_folder, "--systems", ",".join(systems), "--save-runs", str(runs)]
    assert main(command + ["--output", str(report_path)]) == 0
    files = [runs / f"{name}.trec" for name in systems]
    lines = [line.split() for line in files[0].read_text().splitlines()]
    assert all(len(line) == 6 and line[1] == "Q0" and line[5] == "bm25-question" for line in lines)
    # a worse system: the teacher's top 10 in reverse order
    reversed_run = tmp_path / "reversed.trec"
    rows = [line.split() for line in files[1].read_text().splitlines()]
    reversed_run.write_text("".join(f"{q} Q0 {d} {r} {-float(s)} reversed\n" for q, _, d, r, s, _ in rows))
    capsys.readouterr()
    files.append(reversed_run)
    assert main(["compare", *map(str, files), "--data", tiny_data_folder, "--output", str(comparison)]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in systems) and "paired Student's t-test" in printed
    report, result = json.loads(report_path.read_text()), json.loads(comparison.read_text())
    assert result["model_names"] == [*systems, "reversed"] and result["queries"] == report["queries"]
    assert result["runs"] == [str(f) for f in files]
    for name in systems:
        for metric in ("recall@10", "mrr@10", "ndcg@10"):
            assert result[name]["scores"][metric] == pytest.approx(report["systems"][name][metric], abs=1e-4)
    teacher = result["teacher-question"]
    assert teacher["scores"]["recall@10"] == result["reversed"]["scores"]["recall@10"]
    assert teacher["comparisons"]["reversed"]["recall@10"] is None  # same on every query: no test
    assert sum(teacher["win_tie_loss"]["reversed"]["recall@10"].values()) == report["queries"]
    assert teacher["comparisons"]["reversed"]["mrr@10"] < 0.05
    wins = teacher["win_tie_loss"]["reversed"]["mrr@10"]
    assert wins["W"] > 10 * wins["L"] and sum(wins.values()) == report["queries"]
    fisher = ["compare", str(files[1]), str(reversed_run), "--data", tiny_data_folder, "--test", "fisher"]
    assert main([*fisher, "--permutations", "2000", "--output", str(comparison)]) == 0
    result = json.loads(comparison.read_text())
    assert result["permutations"] == 2000 and result["stat_test"] == "fisher"
    assert result["teacher-question"]["comparisons"]["reversed"]["mrr@10"] < 0.05


def test_compare_refuses_missing_malformed_and_single_runs(tiny_data_folder, tmp_path, capsys):
    good, bad, empty = tmp_path / "a.trec", tmp_path / "b.trec", tmp_path / "c.trec"
    good.write_text("q1 Q0 d1 1 2.0 a\n")
    bad.write_text("q1 d1 2.0\n")
    empty.write_text("")
    cases = [
        ([good, tmp_path / "missing.trec"], "missing.trec does not exist"),
        ([good, bad], "b.trec is not a TREC run file"),
        ([good, empty], "c.trec is empty"),
        ([good], "at least two run files"),
    ]
    for files, message in cases:
        assert main(["compare", *map(str, files), "--data", tiny_data_folder]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and "save-runs" in captured.err and captured.out == ""
    fisher = ["compare", str(good), str(good), "--data", tiny_data_folder, "--test", "fisher"]
    assert main([*fisher, "--permutations", "0"]) == 2
    assert "permutations >= 1" in capsys.readouterr().err


def test_eval_with_an_unknown_system_is_refused(tiny_data_folder, capsys):
    assert main(["eval", "--data", tiny_data_folder, "--systems", "bm25"]) == 2
    captured = capsys.readouterr()
    assert "error: Unknown systems ['bm25']; choose from bm25-question" in captured.err and captured.out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_device_this_machine_lacks_is_refused_before_anything_loads(tiny_data_folder, monkeypatch, capsys):
    import native_retriever.data

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the device was checked")

    monkeypatch.setattr(native_retriever.data, "load_data", no_loading)
    for argv in (
        ["eval", "--data", tiny_data_folder, "--systems", "bm25-question", "--device", "cuda"],
        ["train-latent", "--train", tiny_data_folder, "-o", "unused", "--device", "cuda:0"],
    ):
        assert main(argv) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
    assert main(["index", "folder", "-o", "unused", "--device", "gpu0"]) == 2
    assert "'gpu0' is not a device torch knows" in capsys.readouterr().err


def test_eval_runs_on_an_explicit_cpu_device(trained_head, tiny_llm_folder, tiny_data_folder, capsys):
    argv = ["eval", "--data", tiny_data_folder, "--systems", "teacher-question,native-context", "--device", "cpu"]
    assert main([*argv, "--llm", tiny_llm_folder, "--head", str(trained_head)]) == 0
    assert "native-context" in capsys.readouterr().out


def test_index_then_search_prints_hits(index_folder, trained_head, tiny_llm_folder, capsys):
    code = main(
        ["search", str(index_folder), "When is the Zorblat festival?", "--llm", tiny_llm_folder, "-k", "3"]
        + ["--head", str(trained_head)]
    )
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 3
    for rank, line in enumerate(lines, 1):
        assert line.strip().startswith(f"{rank}. [")
    titles = {"Zorblat festival", "Brisquell dance", "Mirravel river", "notes"}
    assert all(any(title in line for title in titles) for line in lines)


def test_search_with_a_missing_head_folder_fails_cleanly(index_folder, tiny_llm_folder, tmp_path, capsys):
    missing = tmp_path / "no-head"
    code = main(["search", str(index_folder), "question", "--llm", tiny_llm_folder, "--head", str(missing)])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    error = captured.err.strip().splitlines()[-1]  # after transformers' own weight-loading progress bar
    assert error.startswith("error: ")
    assert str(missing / "config.json") in error and "is missing" in error and "train-head" in error


def test_missing_llm_folder_fails_cleanly(index_folder, trained_head, tmp_path, capsys):
    code = main(["search", str(index_folder), "q", "--llm", str(tmp_path / "no-llm"), "--head", str(trained_head)])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "save_pretrained" in err


def test_missing_data_folder_fails_cleanly(tmp_path, capsys):
    code = main(["eval", "--data", str(tmp_path / "nothing"), "--systems", "bm25-question"])
    assert code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "data-format" in err


def test_train_head_adds_passage_queries_except_the_dev_positives(tiny_data_folder, tiny_llm_folder, tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (dev / name).write_text((Path(tiny_data_folder) / name).read_text())
    qrels = (Path(tiny_data_folder) / "qrels.tsv").read_text().splitlines(keepends=True)
    (dev / "qrels.tsv").write_text("".join(line for line in qrels if line.split("\t")[2] == "d0"))
    args = ["train-head", "--train", tiny_data_folder, "--dev", str(dev), "--output", str(tmp_path / "head")]
    args += ["--llm", tiny_llm_folder, "--cache", str(tmp_path / "cache"), "--epochs", "1", "--architecture"]
    args += ["linear", "--batch-size", "8", "--max-tokens", "256", "--rank-top-k", "8", "--passage-queries", "3"]
    assert main(args) == 0
    data = ProjectionHead.from_pretrained(tmp_path / "head").config.training["data"]
    # d0 is relevant to a dev query, so only d1 and d2 of the first three passages become training conversations.
    assert [(d["name"], d["queries"]) for d in data][1:] == [("tiny-passages", 2)]
    # When every one of the first N passages is relevant to the dev set, none is added and training still runs.
    args[args.index(str(dev))] = tiny_data_folder
    args[args.index(str(tmp_path / "head"))] = str(tmp_path / "head2")
    args[-1] = "1"
    assert main(args) == 0
    data = ProjectionHead.from_pretrained(tmp_path / "head2").config.training["data"]
    assert [d["name"] for d in data] == ["tiny"]


@pytest.mark.parametrize("flag", ["--max-train-queries", "--passage-queries"])
def test_train_head_refuses_a_count_list_that_does_not_match_the_folders(
    flag, tiny_data_folder, tiny_llm_folder, tmp_path
):
    args = ["train-head", "--train", tiny_data_folder, "--dev", tiny_data_folder, "--output", str(tmp_path / "head")]
    args += ["--llm", tiny_llm_folder, "--cache", str(tmp_path / "cache"), "--max-tokens", "256", flag, "3", "4"]
    with pytest.raises(SystemExit, match=f"{flag} takes one number, or one per --train folder"):
        main(args)
    assert not (tmp_path / "head").exists()


# -- every argument, data file and output path is checked before any model loads ---------------------------------


@pytest.fixture
def no_models(monkeypatch):
    """Make every model loader fail the test if called."""
    import native_retriever.embedder
    import native_retriever.latent
    import native_retriever.models
    import native_retriever.teacher

    def loaded(*args, **kwargs):
        raise AssertionError("a model loaded before the arguments were checked")

    monkeypatch.setattr(native_retriever.models, "load_llm", loaded)
    monkeypatch.setattr(native_retriever.teacher.Teacher, "from_pretrained", loaded)
    monkeypatch.setattr(native_retriever.embedder.NativeEmbedder, "from_pretrained", loaded)
    monkeypatch.setattr(native_retriever.latent.LatentEmbedder, "from_pretrained", loaded)


def _refused(argv: list[str], capsys, *needles) -> str:
    """Run the command, expect exit code 2 and every needle in its error; returns the error."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses a bad value itself, with exit code 2
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    for needle in needles:
        assert str(needle) in err, (needle, err)
    return err


EVAL_DAMAGE = {
    "not-an-object": ("corpus.jsonl", b"[1, 2]", "is an array, not a JSON object"),
    "not-utf8": ("queries.jsonl", b'{"id": "caf\xe9"}', "is not valid UTF-8"),
    "unknown-document": ("qrels.tsv", b"q24b\t0\tno-such-doc\t1", "'no-such-doc', which is not in"),
    "whitespace-id": ("corpus.jsonl", b'{"id": "d 1", "text": "A passage."}', "contains whitespace"),
}


@pytest.mark.parametrize("damage", sorted(EVAL_DAMAGE))
def test_eval_refuses_malformed_data_before_any_model_loads(damage, data_copy, no_models, capsys):
    name, line, message = EVAL_DAMAGE[damage]
    append_line(data_copy / name, line)
    argv = ["eval", "--data", str(data_copy), "--systems", "teacher-question,native-context"]
    _refused(argv, capsys, data_copy / name, message)


def test_eval_refuses_a_corrupt_gzip_and_data_without_judged_queries(data_copy, no_models, capsys):
    argv = ["eval", "--data", str(data_copy), "--systems", "teacher-question"]
    (data_copy / "qrels.tsv").write_text("nobody 0 d1 1\n")
    _refused(argv, capsys, data_copy / "qrels.tsv", "no judged queries")
    (data_copy / "corpus.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00broken")
    (data_copy / "corpus.jsonl").unlink()
    _refused(argv, capsys, data_copy / "corpus.jsonl.gz", "not a readable gzip file")


def test_eval_refuses_unwritable_output_paths_before_any_model_loads(tiny_data_folder, tmp_path, no_models, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("user data")
    argv = ["eval", "--data", tiny_data_folder, "--systems", "teacher-question"]
    _refused([*argv, "--output", str(blocker / "eval.json")], capsys, blocker, "is a file, not a folder")
    _refused([*argv, "--output", str(tmp_path)], capsys, tmp_path, "is a folder")
    _refused([*argv, "--save-runs", str(blocker)], capsys, blocker, "is an existing file")
    _refused([*argv, "--generated-queries", str(blocker)], capsys, blocker, "not a UTF-8 JSON file")
    assert blocker.read_text() == "user data"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_eval_refuses_max_queries_below_one(value, tiny_data_folder, no_models, capsys):
    argv = ["eval", "--data", tiny_data_folder, "--systems", "teacher-question", "--max-queries", value]
    _refused(argv, capsys, "--max-queries", "must be at least 1")


def test_compare_and_latent_rationales_check_their_output_first(tiny_data_folder, tmp_path, no_models, capsys):
    run = tmp_path / "a.trec"
    run.write_text("q1 Q0 d1 1 2.0 a\n")
    argv = ["compare", str(run), str(run), "--data", tiny_data_folder, "--output", str(tmp_path)]
    _refused(argv, capsys, tmp_path, "is a folder")
    argv = ["latent-rationales", "--data", tiny_data_folder, "-o", str(tmp_path)]
    _refused(argv, capsys, tmp_path, "is a folder")


def test_index_checks_its_output_and_its_arguments_before_any_embedding(tmp_path, no_models, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Some text.")
    existing = tmp_path / "index.txt"
    existing.write_text("user data")
    _refused(["index", str(docs), "-o", str(existing)], capsys, existing, "is an existing file, not a folder")
    _refused(["index", str(docs), "-o", str(existing / "index")], capsys, existing, "is a file, not a folder")
    _refused(["index", str(docs), "-o", str(tmp_path / "i"), "--max-words", "5"], capsys, "--max-words", "at least 20")
    assert existing.read_text() == "user data"


@pytest.mark.parametrize("argv", [["search", "index", "q", "-k", "0"], ["chat", "index", "-k", "-1"]])
def test_search_and_chat_refuse_k_below_one(argv, no_models, capsys):
    _refused(argv, capsys, "argument -k", "must be at least 1")


def test_every_option_of_every_command_says_what_it_does_and_its_default():
    import argparse

    from native_retriever.cli import build_parser

    def commands(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, (*prefix, name))
        yield prefix, parser

    missing = []
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            text = action.help or ""
            flag = " ".join([*path, *(action.option_strings or [action.dest])])
            if len(text.replace("(default", "").split()) < 3:
                missing.append(f"{flag}: no description ({text!r})")
            elif action.option_strings and not any(word in text for word in ("default", "required")):
                missing.append(f"{flag}: says neither its default nor that it is required ({text!r})")
            elif action.option_strings and action.required and "required" not in text:
                missing.append(f"{flag}: does not say it is required")
    assert not missing, "\n".join(missing)


# -- the commands' bodies are library calls ------------------------------------------------------------------------


def test_evaluate_returns_the_report_eval_writes(trained_head, tiny_llm_folder, tiny_data_folder, tmp_path, capsys):
    from native_retriever.evaluation import evaluate

    systems = ["bm25-question", "teacher-history", "native-context"]
    output = tmp_path / "eval.json"
    argv = ["eval", "--data", tiny_data_folder, "--llm", tiny_llm_folder, "--head", str(trained_head)]
    assert main([*argv, "--systems", ",".join(systems), "--max-queries", "8", "--output", str(output)]) == 0
    report = evaluate(tiny_data_folder, systems, llm=tiny_llm_folder, head=trained_head, max_queries=8)
    assert report == json.loads(output.read_text())
    assert list(report) == ["data", "queries", "passages", "systems", "heads", "latent"]
    head = ProjectionHead.from_pretrained(trained_head)
    assert report["heads"]["native-context"]["metrics"] == head.config.metrics["dev"] and report["latent"] == {}


def test_a_system_of_ones_own_is_one_class_and_needs_are_checked_first(tiny_data_folder):
    from native_retriever.cli import build_parser
    from native_retriever.data import load_data
    from native_retriever.errors import InvalidArgumentError
    from native_retriever.evaluation import DEFAULT_SYSTEMS, SYSTEMS, System, evaluate_systems

    data = load_data(tiny_data_folder, max_queries=10)

    class Oracle:  # ranks each query's judged passages first
        name, needs = "oracle", ()
        calls = 0

        def run(self, inputs):
            Oracle.calls += 1
            return {qid: dict.fromkeys(inputs.data.qrels[qid], 1.0) for qid in inputs.query_ids}

    assert isinstance(Oracle(), System) and all(isinstance(s, System) for s in SYSTEMS.values())
    assert build_parser().parse_args(["eval", "--data", "d"]).systems == ",".join(DEFAULT_SYSTEMS)
    evaluate = build_parser()._subparsers._group_actions[0].choices["eval"]
    assert all(name in next(a for a in evaluate._actions if a.dest == "systems").help for name in SYSTEMS)
    report = evaluate_systems(data, [Oracle(), "bm25-question"])
    assert list(report["systems"]) == ["oracle", "bm25-question"]
    oracle = report["systems"]["oracle"]
    perfect = {"recall@10": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0}
    assert "within_story" not in oracle  # the tiny corpus has no story passages (<story_id>#<n>)
    assert oracle.pop("by_turn") == {"1": perfect | {"queries": 6}, "2-3": perfect | {"queries": 4}}
    assert oracle == perfect | {"queries": 10}
    # a system whose inputs are missing is refused before any system runs
    with pytest.raises(InvalidArgumentError, match="'teacher-question' needs a Teacher"):
        evaluate_systems(data, [Oracle(), "teacher-question"])
    assert Oracle.calls == 1


def test_chat_forgets_what_the_window_cut_and_the_llm_sees_the_same(
    index_folder, trained_head, tiny_llm_folder, monkeypatch, capsys
):
    import native_retriever.agent as agent

    real, seen, full = agent.native_turn, [], []

    def recording(embedder, index, messages, k=3, **kwargs):
        full.append(messages[-1])
        # nothing the LLM reads is lost
        assert embedder.tokenize(messages).input_ids == embedder.tokenize(full).input_ids
        seen.append(len(messages))
        result = real(embedder, index, messages, k=k, **kwargs)
        full.append({"role": "assistant", "content": result.answer})
        return result

    monkeypatch.setattr(agent, "native_turn", recording)
    turns = 16
    question = "tell me about the Zorblat festival near Quenwick and who visits it?"
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"Turn {n}: {question}\n" for n in range(turns))))
    assert main(["chat", str(index_folder), "--llm", tiny_llm_folder, "--head", str(trained_head), "-k", "2"]) == 0
    assert len(seen) == turns and len(full) == 2 * turns
    assert max(seen) <= 12 < 2 * turns - 1  # the history stays about one 256-token window long
    assert capsys.readouterr().out.count("Assistant:") == turns


@pytest.mark.parametrize("command", ["train-head", "train-latent", "index"])
def test_commands_refuse_an_output_folder_they_did_not_write_before_any_model_loads(
    command, tiny_data_folder, tmp_path, no_models, capsys
):
    """A folder of the user's files at -o was replaced by the head (rc 0); now it is refused and left as it was."""
    docs, out, head = tmp_path / "docs", tmp_path / "project", tmp_path / "head"
    docs.mkdir()
    (docs / "a.txt").write_text("Some text about the Zorblat festival.")
    (out / "src").mkdir(parents=True)
    (out / "src" / "main.py").write_text("print('my program')\n")
    llm = {"name": "llm", "hidden_size": 8, "num_layers": 2, "vocab_size": 100, "fingerprint": [0.5]}
    teacher = {"name": "teacher", "dim": 4, "fingerprint": [0.5]}
    ProjectionHead(HeadConfig(8, 4, architecture="linear", llm=llm, teacher=teacher)).save_pretrained(head)
    argv = {
        "train-head": ["train-head", "--train", tiny_data_folder, "--dev", tiny_data_folder, "--llm", "llm", "-o"],
        "train-latent": ["train-latent", "--train", tiny_data_folder, "--llm", "llm", "-o"],
        "index": ["index", str(docs), "-o"],
    }[command]
    _refused([*argv, str(out)], capsys, out, "native-retriever did not write (src)", "Choose another output path")
    assert [p.relative_to(out).as_posix() for p in sorted(out.rglob("*"))] == ["src", "src/main.py"]
    assert (out / "src" / "main.py").read_text() == "print('my program')\n"
    if command != "train-head":  # a folder the package wrote, but of another kind
        _refused([*argv, str(head)], capsys, head, "holds a native-retriever head, not a", "refusing")
    assert sorted(os.listdir(tmp_path)) == ["docs", "head", "project"]


def test_train_head_takes_span_and_its_earlier_name_tokens():
    from native_retriever.cli import build_parser

    base = ["train-head", "--train", "t", "--dev", "d", "-o", "out"]
    assert build_parser().parse_args(base).span == "all"
    assert build_parser().parse_args([*base, "--span", "last_user"]).span == "last_user"
    assert build_parser().parse_args([*base, "--tokens", "last_user"]).span == "last_user"

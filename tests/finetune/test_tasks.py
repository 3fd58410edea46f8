"""Task registry and data loading: the GLUE TSVs in their distributed layouts, CSV/JSONL, bad input, and the
shakespeare_genre task's split by play."""

import json

import pytest

from dstrain.config import UserError
from dstrain.finetune import genre
from dstrain.finetune.tasks import GLUE_TASKS, check_task_name, get_task, load_examples, load_local_split

MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                   "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
# One or two rows per task as GLUE distributes them; expected (text_a, text_b, hub label id).
GLUE_SAMPLES = {
    "cola": ("gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
             "gj04\t0\t*\tThey drank the pub.\n",
             [("Our friends won't buy this analysis, let alone the next one we propose.", None, 1),
              ("They drank the pub.", None, 0)]),
    "sst2": ("sentence\tlabel\nit 's a \"charming\" journey . \t1\nunflinchingly bleak \t0\n",
             [("it 's a \"charming\" journey . ", None, 1), ("unflinchingly bleak ", None, 0)]),
    "mrpc": ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t702876\t702977\tAmrozi accused his brother.\t"
             "Referring to him, Amrozi accused his brother.\n",
             [("Amrozi accused his brother.", "Referring to him, Amrozi accused his brother.", 1)]),
    "stsb": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking "
             "off.\t5.000\n", [("A plane is taking off.", "An air plane is taking off.", 5.0)]),
    "qqp": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n201359\t303345\t303346\tWhy are people so "
            "obsessed?\tWhy are people obsessed?\t1\n",
            [("Why are people so obsessed?", "Why are people obsessed?", 1)]),
    "mnli": (MNLI_DEV_HEADER + "\n0\t63735\t63735n\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe new rights are "
             "nice enough\tEveryone really likes the newest benefits \tneutral\tentailment\tneutral\tneutral\t"
             "neutral\tneutral\n",
             [("The new rights are nice enough", "Everyone really likes the newest benefits ", 1)]),
    "qnli": ("index\tquestion\tsentence\tlabel\n0\tWhat came into force?\tThe law came into force.\tentailment\n"
             "1\tWhen?\tNo idea.\tnot_entailment\n",
             [("What came into force?", "The law came into force.", 0), ("When?", "No idea.", 1)]),
    "rte": ("index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died.\tChristopher Reeve had an accident.\t"
            "not_entailment\n", [("Dana Reeve died.", "Christopher Reeve had an accident.", 1)]),
    "wnli": ("index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n",
             [("I stuck a pin through a carrot.", "The carrot had a hole.", 1)]),
}


def test_every_glue_task_has_a_sample():
    assert set(GLUE_SAMPLES) == set(GLUE_TASKS)


@pytest.mark.parametrize("task", sorted(GLUE_SAMPLES))
def test_glue_tsv_layouts_as_distributed(tmp_path, task):
    text, expected = GLUE_SAMPLES[task]
    p = tmp_path / ("dev_matched.tsv" if task == "mnli" else "dev.tsv")
    p.write_text(text)
    spec = get_task(task)
    ex = load_local_split(spec, p)
    assert [(e["text_a"], e["text_b"], e["label"]) for e in ex] == expected
    if task == "mnli":
        (tmp_path / "dev_mismatched.tsv").write_text(text)
        (tmp_path / "train.tsv").write_text(text)
        got = load_examples(spec, str(tmp_path), ("train", "validation_matched", "validation_mismatched"))
        assert set(got) == {"train", "validation_matched", "validation_mismatched"}


def test_csv_and_jsonl_use_hub_column_names_and_label_names_or_ids(tmp_path):
    spec = get_task("mnli")
    (tmp_path / "train.csv").write_text('premise,hypothesis,label\n"A man, tall",A man,0\nx,y,contradiction\n')
    ex = load_local_split(spec, tmp_path / "train.csv")
    assert [(e["text_a"], e["label"]) for e in ex] == [("A man, tall", 0), ("x", 2)]
    (tmp_path / "dev.jsonl").write_text(json.dumps({"premise": "p", "hypothesis": "h", "label": 1}) + "\n\n")
    assert load_local_split(spec, tmp_path / "dev.jsonl")[0]["label"] == 1


def test_unknown_task_suggests_nearest():
    with pytest.raises(UserError, match=r"--task 'sst-2': unknown task. Did you mean `sst2`\?"):
        check_task_name("sst-2")
    with pytest.raises(UserError, match="Did you mean `shakespeare_genre`"):
        check_task_name("shakespeare_genres")
    assert check_task_name("squad") == "squad"


def test_missing_column_names_file_and_line(tmp_path):
    p = tmp_path / "train.tsv"
    p.write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(UserError) as e:
        load_local_split(get_task("rte"), p)
    assert f"{p} line 1: missing column(s) 'sentence2'" in str(e.value)
    j = tmp_path / "train.jsonl"
    j.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": 0}) + "\n" + json.dumps({"sentence1": "a"}))
    with pytest.raises(UserError, match=r"train.jsonl line 2: missing column\(s\) 'sentence2', 'label'"):
        load_local_split(get_task("rte"), j)
    c = tmp_path / "train.csv"
    c.write_text("text,label\nhello,1\n")
    with pytest.raises(UserError, match=r"train.csv line 1: missing column\(s\) 'sentence'"):
        load_local_split(get_task("sst2"), c)
    short = tmp_path / "dev.tsv"
    short.write_text("gj04\t1\n")  # CoLA rows have 4 fields
    with pytest.raises(UserError, match=r"dev.tsv line 1: 2 tab-separated field\(s\)"):
        load_local_split(get_task("cola"), short)
    # except in QQP, whose distributed train.tsv has a few broken lines that GLUE's processor skips
    qqp = tmp_path / "qqp.tsv"
    qqp.write_text(GLUE_SAMPLES["qqp"][0] + "3\t4\tbroken line\n")
    assert len(load_local_split(get_task("qqp"), qqp)) == 1


def test_label_outside_the_task_set_names_file_and_line(tmp_path):
    p = tmp_path / "dev.tsv"
    p.write_text("sentence\tlabel\nfine\t1\nodd\t2\n")
    with pytest.raises(UserError) as e:
        load_local_split(get_task("sst2"), p)
    assert f"{p} line 3: label '2' is not one of sst2's labels: 0 (negative), 1 (positive)" in str(e.value)
    q = tmp_path / "train.tsv"
    q.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n")
    with pytest.raises(UserError, match=r"train.tsv line 2: label 'contradiction' is not one of rte's labels"):
        load_local_split(get_task("rte"), q)
    s = tmp_path / "s.tsv"
    s.write_text(GLUE_SAMPLES["stsb"][0].replace("5.000", "high"))
    with pytest.raises(UserError, match=r"s.tsv line 2: label 'high' is not a number"):
        load_local_split(get_task("stsb"), s)


def test_missing_split_file_says_what_is_expected(tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(UserError, match=r"no file for the validation split; expected dev.tsv/.csv/.jsonl"):
        load_examples(get_task("rte"), str(tmp_path), ("train", "validation"))
    with pytest.raises(UserError, match="no such folder"):
        load_examples(get_task("rte"), str(tmp_path / "nope"), ("train",))


def test_genre_split_is_by_play_deterministic_and_covers_every_genre():
    train, dev = genre.genre_examples("train"), genre.genre_examples("validation")
    train_plays, dev_plays = {e["play"] for e in train}, {e["play"] for e in dev}
    assert train_plays and dev_plays and not train_plays & dev_plays
    for split in (train, dev):
        assert {e["label"] for e in split} == set(range(len(genre.GENRES)))
    assert "hamlet" in train_plays | dev_plays
    assert genre.play_split(["d", "a", "c", "b", "e"]) == {"a": "train", "b": "validation", "c": "train",
                                                           "d": "train", "e": "train"}
    genre._all_examples.cache_clear()
    assert genre.genre_examples("validation") == dev  # same passages, same order, on a fresh build
    assert all(len(e["text_a"].split()) >= genre.PASSAGE_WORDS for e in dev)


def test_genre3_keeps_only_the_folio_genres_with_the_same_passages():
    """shakespeare_genre3: comedies/histories/tragedies relabelled 0..2, the same play split and passages."""
    task = get_task("shakespeare_genre3")
    assert task.labels == ("comedies", "histories", "tragedies")
    ex = load_examples(task, "", ("train", "validation"))
    six = {s: genre.genre_examples(s) for s in ("train", "validation")}
    for split, rows in ex.items():
        assert {e["label"] for e in rows} == {0, 1, 2}
        want = [(e["text_a"], genre.GENRES[e["label"]]) for e in six[split] if genre.GENRES[e["label"]] in task.labels]
        assert [(e["text_a"], task.labels[e["label"]]) for e in rows] == want
    with pytest.raises(UserError, match="drop --data_dir"):
        load_examples(task, "somewhere", ("train",))


def test_genre_passages_drop_names_and_stage_directions():
    md = ("# Play\n\n## ACT I\n\n_Enter KING_\n\n**KING**  \nWhat news, my lord?  \n_Aside_  \nSpeak.\n\n"
          "**LORD**  \nThe day is lost.\n")
    assert genre.speeches(md) == ["What news, my lord? Speak.", "The day is lost."]
    assert genre.passages(md, min_words=6) == ["What news, my lord? Speak. The day is lost."]


def test_hub_data_unreachable_says_to_use_data_dir(monkeypatch):
    """Without the hub (offline, no cache), loading GLUE/SQuAD from it is a clear error, not a traceback."""
    from dstrain.finetune.squad import load_squad

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home-for-test")
    with pytest.raises(UserError, match=r"--task rte: could not load the GLUE data .* pass --data_dir DIR"):
        load_examples(get_task("rte"), "", ("train",))
    with pytest.raises(UserError, match=r"--task squad: could not load SQuAD .* pass --data_dir DIR"):
        load_squad("", ("train",))

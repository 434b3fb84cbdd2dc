"""Data loading: files and saved datasets with field mapping, real GSM8K, and errors naming file/row/field."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict

from llmac.data.gsm8k import (
    GSM8K_DIR_ENV,
    MODEL_SOLUTION_SOURCES,
    load_gsm8k,
    load_gsm8k_model_solutions,
)
from llmac.data.loading import (
    DataError,
    PromptDataConfig,
    build_prompts,
    format_prompt,
    gsm8k_solution,
    load_prompts,
    split_gsm8k_answer,
    strip_calculator_annotations,
)

ROWS = [
    {"problem": "1 + 2 =", "final": 3, "steps": "1 + 2 = 3\nAnswer: 3", "extra": "x"},
    {"problem": "5 - 7 =", "final": "-2", "steps": "5 - 7 = -2\nAnswer: -2", "extra": "y"},
    {"problem": "4 + 4 + 1 =", "final": " 9 ", "steps": "4 + 4 = 8\n8 + 1 = 9\nAnswer: 9", "extra": "z"},
]
ARROW_ROWS = [dict(row, final=str(row["final"])) for row in ROWS]  # arrow columns hold one type
MAPPED = {"question_field": "problem", "answer_field": "final", "solution_field": "steps"}


def _write_jsonl(path, rows_or_lines):
    lines = [line if isinstance(line, str) else json.dumps(line) for line in rows_or_lines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _expected_mapped():
    return {
        "question": ["1 + 2 =", "5 - 7 =", "4 + 4 + 1 ="],
        "answer": ["3", "-2", "9"],
        "solution": [row["steps"] for row in ROWS],
    }


# ------------------------------------------------------------------------------ sources and mapping


def test_jsonl_with_field_mapping(tmp_path):
    path = _write_jsonl(tmp_path / "rows.jsonl", ROWS)
    dataset = load_prompts(PromptDataConfig(path=str(path), **MAPPED))
    assert dataset.to_dict() == _expected_mapped()  # only canonical columns; numbers and padding cleaned


def test_jsonl_without_solution_field_has_no_solution_column(tmp_path):
    path = _write_jsonl(
        tmp_path / "rows.jsonl", [{"question": "q1", "answer": "a1"}, {"question": "q2", "answer": "a2"}]
    )
    dataset = load_prompts(PromptDataConfig(path=str(path)))
    assert dataset.column_names == ["question", "answer"]
    assert dataset["answer"] == ["a1", "a2"]


def test_json_list_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert load_prompts(PromptDataConfig(path=str(path), **MAPPED)).to_dict() == _expected_mapped()


def test_parquet_with_gsm8k_answer_format(tmp_path):
    path = tmp_path / "rows.parquet"
    Dataset.from_dict(
        {
            "q": ["How many?", "How much?"],
            "a": ["2*540=<<2*540=1080>>1,080 apples\n\nSo 1,080\n#### 1,080", "It is 5-3=<<5-3=2>>2\n#### 2"],
        }
    ).to_parquet(str(path))
    dataset = load_prompts(
        PromptDataConfig(path=str(path), question_field="q", answer_field="a", answer_format="gsm8k")
    )
    assert dataset.to_dict() == {
        "question": ["How many?", "How much?"],
        "answer": ["1080", "2"],
        "solution": ["2*540=1,080 apples\nSo 1,080", "It is 5-3=2"],
    }


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    single = Dataset.from_list(ARROW_ROWS)
    single.save_to_disk(str(tmp_path / "single"))
    assert (
        load_prompts(PromptDataConfig(path=str(tmp_path / "single"), **MAPPED)).to_dict()
        == _expected_mapped()
    )

    DatasetDict({"train": single, "test": single.select([1])}).save_to_disk(str(tmp_path / "dict"))
    test = load_prompts(PromptDataConfig(path=str(tmp_path / "dict"), split="test", **MAPPED))
    assert test.to_dict() == {"question": ["5 - 7 ="], "answer": ["-2"], "solution": [ROWS[1]["steps"]]}
    with pytest.raises(DataError, match=r"dict: no split 'validation' \(splits: train, test\)"):
        load_prompts(PromptDataConfig(path=str(tmp_path / "dict"), split="validation", **MAPPED))


def test_folder_of_data_files_through_load_dataset(tmp_path):
    folder = tmp_path / "gsm_like"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", ROWS)
    _write_jsonl(folder / "test.jsonl", ROWS[2:])
    config = PromptDataConfig(path=str(folder), split="test", cache_dir=str(tmp_path / "cache"), **MAPPED)
    assert load_prompts(config)["question"] == ["4 + 4 + 1 ="]


def test_max_samples_and_shuffle(tmp_path):
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(20)]
    path = str(_write_jsonl(tmp_path / "rows.jsonl", rows))
    assert load_prompts(PromptDataConfig(path=path, max_samples=3))["answer"] == ["0", "1", "2"]
    shuffled = load_prompts(PromptDataConfig(path=path, shuffle=True, seed=7))["answer"]
    assert sorted(shuffled, key=int) == [str(i) for i in range(20)]
    assert shuffled != [str(i) for i in range(20)]
    assert load_prompts(PromptDataConfig(path=path, shuffle=True, seed=7))["answer"] == shuffled
    assert load_prompts(PromptDataConfig(path=path, shuffle=True, seed=8))["answer"] != shuffled
    first5 = load_prompts(PromptDataConfig(path=path, shuffle=True, seed=7, max_samples=5))["answer"]
    assert first5 == shuffled[:5]


def test_config_rejects_unknown_answer_format():
    with pytest.raises(ValueError, match="answer_format"):
        PromptDataConfig(path="x.jsonl", answer_format="latex")


# ------------------------------------------------------------------------------------ GSM8K format


def test_gsm8k_format_helpers():
    assert strip_calculator_annotations("16 - 3 = <<16-3=13>>13 and $<<13*2=26>>26") == "16 - 3 = 13 and $26"
    assert strip_calculator_annotations("cut off at 41.472+8 = $<<41.472+8.") == "cut off at 41.472+8 = $"
    assert split_gsm8k_answer("a\nb\n#### 1,234,567") == ("a\nb\n", "1234567")
    assert gsm8k_solution("  a = <<1+1=2>>2 \n\n b\n") == "a = 2\nb"
    with pytest.raises(ValueError, match="no '#### '"):
        split_gsm8k_answer("The answer is 5")
    with pytest.raises(ValueError, match="nothing after"):
        split_gsm8k_answer("5\n####  ")


def test_load_gsm8k_real_splits(gsm8k_dir):
    train, test = load_gsm8k("train", gsm8k_dir), load_gsm8k("test", gsm8k_dir)
    assert (len(train), len(test)) == (7473, 1319)
    assert train.column_names == test.column_names == ["question", "answer", "solution"]
    # test row 1, checked by hand: 16 - 3 - 4 = 9 eggs sold at $2 -> 18
    assert test[0]["question"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert test[0]["answer"] == "18"
    assert test[0]["solution"] == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer’s market."
        "\nThe answer is 18"
    )
    for split in (train, test):
        for answer, solution in zip(split["answer"], split["solution"], strict=True):
            float(answer)  # every gold is a plain number once commas are gone
            assert "," not in answer
            assert "<<" not in solution and "####" not in solution and "\n\n" not in solution


def test_load_gsm8k_comma_gold_and_blank_lines(gsm8k_dir):
    train = load_gsm8k("train", gsm8k_dir)
    with (gsm8k_dir / "train.jsonl").open() as f:
        raw = [json.loads(line)["answer"] for line in f]
    with_commas = [i for i, answer in enumerate(raw) if "," in answer.rsplit("####", 1)[1]]
    assert len(with_commas) == 79
    for i in with_commas:
        assert train[i]["answer"] == raw[i].rsplit("#### ", 1)[1].replace(",", "")
    terry = next(i for i, answer in enumerate(raw) if answer.startswith("Terry will be 4*10"))
    assert (
        train[terry]["solution"]
        == "Terry will be 4*10=40 years old in 10 years\nCurrently, Terry is 40-10 = 30 years old.\nThe answer is 30"
    )
    assert train[terry]["answer"] == "30"


HUB_ROWS = {  # two rows in openai/gsm8k's layout: annotations, a comma in the gold, a blank line
    "question": ["Tom has 3 bags of 4 apples. How many apples?", "A farm has 1,200 cows and buys 300. Cows?"],
    "answer": ["3 * 4 = <<3*4=12>>12 apples\n#### 12", "1200 + 300 = <<1200+300=1500>>1500\n\n#### 1,500"],
}


def _fake_hub(calls, rows=HUB_ROWS, error=None):
    def load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        if error is not None:
            raise error
        return Dataset.from_dict(rows)

    return load_dataset


def test_load_gsm8k_reads_the_hub_by_default(monkeypatch):
    import llmac.data.gsm8k as gsm8k

    calls = []
    monkeypatch.delenv(GSM8K_DIR_ENV, raising=False)
    monkeypatch.setattr(gsm8k, "load_dataset", _fake_hub(calls))
    assert load_gsm8k("test").to_dict() == {
        "question": HUB_ROWS["question"],
        "answer": ["12", "1500"],
        "solution": ["3 * 4 = 12 apples\nThe answer is 12", "1200 + 300 = 1500\nThe answer is 1500"],
    }
    load_gsm8k("validation", dataset_name="me/gsm8k-mirror", dataset_config=None)
    assert calls == [("openai/gsm8k", "main", "test"), ("me/gsm8k-mirror", None, "validation")]


def test_load_gsm8k_offline_names_the_local_option(monkeypatch):
    import llmac.data.gsm8k as gsm8k

    monkeypatch.delenv(GSM8K_DIR_ENV, raising=False)
    offline = ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)\nmore")
    monkeypatch.setattr(gsm8k, "load_dataset", _fake_hub([], error=offline))
    with pytest.raises(DataError) as caught:
        load_gsm8k("train")
    assert str(caught.value) == (
        "openai/gsm8k (config 'main', split 'train'): datasets.load_dataset failed (ConnectionError: "
        "Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)); offline, pass --gsm8k_dir "
        f"(or set {GSM8K_DIR_ENV}) to a folder holding GSM8K's train.jsonl and test.jsonl"
    )
    assert caught.value.__cause__ is offline


def test_load_gsm8k_hub_rows_are_checked(monkeypatch):
    import llmac.data.gsm8k as gsm8k

    monkeypatch.delenv(GSM8K_DIR_ENV, raising=False)
    rows = {"question": ["q1", " "], "answer": ["no marker", "x\n#### 2"]}
    monkeypatch.setattr(gsm8k, "load_dataset", _fake_hub([], rows=rows))
    with pytest.raises(
        DataError, match=r"row 1: field 'answer' has no '#### '(.|\n)*row 2: field 'question'"
    ):
        load_gsm8k("train")
    monkeypatch.setattr(gsm8k, "load_dataset", _fake_hub([], rows={"problem": ["q"], "answer": ["#### 1"]}))
    with pytest.raises(DataError, match=r"no column 'question' \(columns: problem, answer\)"):
        load_gsm8k("train")


def test_load_gsm8k_local_folder_and_env(gsm8k_dir, tmp_path, monkeypatch):
    import llmac.data.gsm8k as gsm8k

    monkeypatch.setattr(gsm8k, "load_dataset", lambda *a, **k: pytest.fail("went to the Hub"))
    monkeypatch.setenv(GSM8K_DIR_ENV, str(gsm8k_dir))
    assert len(load_gsm8k("test")) == 1319  # the environment variable's folder (tests/conftest.py sets it)
    _write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "x\n#### 7"}])
    expected = {"question": ["q"], "answer": ["7"], "solution": ["x\nThe answer is 7"]}
    assert load_gsm8k("train", data_dir=tmp_path).to_dict() == expected  # data_dir wins over the variable
    monkeypatch.setenv(GSM8K_DIR_ENV, str(tmp_path))
    assert load_gsm8k("train").to_dict() == expected
    with pytest.raises(DataError, match=rf"test.jsonl: GSM8K file not found .*{GSM8K_DIR_ENV}"):
        load_gsm8k("test")


def test_gsm8k_task_passes_its_dataset_fields(gsm8k_dir, monkeypatch):
    import llmac.data.gsm8k as gsm8k
    from llmac.data.tasks import TaskConfig, load_task

    calls = []
    monkeypatch.delenv(GSM8K_DIR_ENV, raising=False)
    monkeypatch.setattr(gsm8k, "load_dataset", _fake_hub(calls))
    hub = TaskConfig(task="gsm8k", dataset_name="me/mirror", dataset_config=None, dataset_test_split="dev")
    assert load_task(hub, "eval")["answer"] == ["12", "1500"]
    assert load_task(hub, "rl").column_names == ["question", "answer"]
    assert calls == [("me/mirror", None, "dev"), ("me/mirror", None, "train")]
    local = TaskConfig(task="gsm8k", gsm8k_dir=str(gsm8k_dir), num_train=5, num_eval=3)
    assert len(load_task(local, "train")) == 5 and load_task(local, "eval")["answer"][0] == "18"
    assert len(calls) == 2  # the local folder never asks the Hub


def _same_number(predicted: str, gold: str) -> bool:
    try:
        return float(predicted) == float(gold)
    except ValueError:  # e.g. "-1.8 billion"
        return predicted == gold


def test_load_gsm8k_model_solutions_real(gsm8k_dir):
    rows = load_gsm8k_model_solutions(gsm8k_dir / "model_solutions.jsonl", gsm8k_dir / "test.jsonl")
    assert len(rows) == 4 * 660
    assert rows.column_names == ["question", "answer", "solution", "source", "is_correct"]
    assert rows["source"][:4] == list(MODEL_SOLUTION_SOURCES)
    assert [rows["source"].count(s) for s in MODEL_SOLUTION_SOURCES] == [660] * 4
    assert sum(rows["is_correct"]) == 1008
    # Janet's ducks: gold 18 from test.jsonl; only the 175B verification solution gets it right
    assert rows["answer"][:4] == ["18"] * 4
    assert rows["is_correct"][:4] == [False, False, False, True]
    assert rows[3]["solution"].endswith("so 2 * 9 = $18 per day\nA: 18")
    assert all("<<" not in s for s in rows["solution"])

    # The join is right: is_correct says whether the solution's "A: N" line equals the joined gold.
    unfinished = 0
    for answer, solution, is_correct in zip(
        rows["answer"], rows["solution"], rows["is_correct"], strict=True
    ):
        last = solution.rsplit("\n", 1)[-1]
        if not last.startswith("A: "):  # cut off before answering
            unfinished += 1
            assert not is_correct
            continue
        predicted = last[3:].replace(",", "").strip()
        assert _same_number(predicted, answer) == is_correct
    assert unfinished == 8


def test_model_solutions_keep_annotations_on_request(gsm8k_dir):
    rows = load_gsm8k_model_solutions(gsm8k_dir / "model_solutions.jsonl", strip_annotations=False)
    assert rows[0]["solution"].startswith("Janet eats 3 ducks eggs for breakfast every morning and she sells")
    assert "16 - 3 = <<16-3=13>>13" in rows[0]["solution"]


# --------------------------------------------------------------------- bad input names file/row/field


def _error(config: PromptDataConfig) -> str:
    with pytest.raises(DataError) as info:
        load_prompts(config)
    return str(info.value)


def test_invalid_json_line(tmp_path):
    path = _write_jsonl(
        tmp_path / "bad.jsonl", [{"question": "q", "answer": "1"}, "", '{"question": "q2", "answer": ']
    )
    message = _error(PromptDataConfig(path=str(path)))
    assert str(path) in message
    assert "line 3: is not valid JSON" in message  # the blank line 2 still counts


def test_missing_answer_field(tmp_path):
    path = _write_jsonl(
        tmp_path / "bad.jsonl", [{"question": "q", "answer": "1"}, {"question": "q2", "gold": "2"}]
    )
    message = _error(PromptDataConfig(path=str(path)))
    assert message.startswith(f"{path}: 1 problem(s) in 1 line(s)")
    assert "line 2: field 'answer' is missing" in message


def test_missing_mapped_question_field(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "1"}])
    message = _error(PromptDataConfig(path=str(path), question_field="problem"))
    assert f"{path}: " in message and "line 1: field 'problem' is missing" in message


def test_non_string_and_empty_questions(tmp_path):
    rows = [
        {"question": "ok", "answer": "1"},
        {"question": 42, "answer": "2"},
        {"question": "  ", "answer": "3"},
    ]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    message = _error(PromptDataConfig(path=str(path)))
    assert "line 2: field 'question' is int, not a string" in message
    assert "line 3: field 'question' is empty" in message


def test_gsm8k_answer_without_marker(tmp_path):
    rows = [{"question": "q1", "answer": "x\n#### 1"}, {"question": "q2", "answer": "The answer is 2"}]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    message = _error(PromptDataConfig(path=str(path), answer_format="gsm8k"))
    assert str(path) in message
    assert "line 2: field 'answer' has no '#### ' final-answer marker" in message


def test_errors_are_collected_counted_and_the_first_five_listed(tmp_path):
    lines = ["not json"] + [{"question": f"q{i}"} for i in range(8)] + [{"question": "", "answer": "1"}]
    path = _write_jsonl(tmp_path / "bad.jsonl", lines)
    message = _error(PromptDataConfig(path=str(path)))
    assert message.startswith(f"{path}: 10 problem(s) in 10 line(s): ")
    assert "8 x field 'answer' is missing" in message
    assert "1 x is not valid JSON" in message and "1 x field 'question' is empty" in message
    listed = message.split("First 5:\n")[1].splitlines()
    assert [line.split(":")[0].strip() for line in listed] == [
        "line 1",
        "line 2",
        "line 3",
        "line 4",
        "line 5",
    ]


def test_parquet_bad_rows_and_missing_column(tmp_path):
    path = tmp_path / "bad.parquet"
    Dataset.from_dict({"question": ["q1", "q2", None], "answer": ["1", None, "3"]}).to_parquet(str(path))
    message = _error(PromptDataConfig(path=str(path)))
    assert str(path) in message
    assert "row 2: field 'answer' is NoneType, not a string" in message
    assert "row 3: field 'question' is NoneType, not a string" in message

    Dataset.from_dict({"question": ["q1"], "gold": ["1"]}).save_to_disk(str(tmp_path / "saved"))
    message = _error(PromptDataConfig(path=str(tmp_path / "saved")))
    assert message == f"{tmp_path / 'saved'}: no column 'answer' (columns: question, gold)"


def test_solution_field_problems(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "1", "steps": ["a", "b"]}])
    message = _error(PromptDataConfig(path=str(path), solution_field="steps"))
    assert "line 1: field 'steps' is list, not a string" in message


def test_missing_and_unsupported_files(tmp_path):
    assert (
        _error(PromptDataConfig(path=str(tmp_path / "nope.jsonl")))
        == f"{tmp_path / 'nope.jsonl'}: no such file or directory"
    )
    (tmp_path / "rows.csv").write_text("question,answer\nq,1\n")
    assert "unsupported file type '.csv'" in _error(PromptDataConfig(path=str(tmp_path / "rows.csv")))
    (tmp_path / "empty.jsonl").write_text("\n")
    assert (
        _error(PromptDataConfig(path=str(tmp_path / "empty.jsonl"))) == f"{tmp_path / 'empty.jsonl'}: no rows"
    )


def test_model_solutions_bad_rows(gsm8k_dir, tmp_path):
    with (gsm8k_dir / "model_solutions.jsonl").open() as f:
        good = [json.loads(next(f)) for _ in range(3)]
    unknown = dict(good[1], question="A question that is not in GSM8K's test set?")
    no_verdict = json.loads(json.dumps(good[2]))
    del no_verdict["6b_verification"]["is_correct"]
    path = _write_jsonl(tmp_path / "solutions.jsonl", [good[0], unknown, no_verdict])
    with pytest.raises(DataError) as info:
        load_gsm8k_model_solutions(path, gsm8k_dir / "test.jsonl")
    message = str(info.value)
    assert str(path) in message
    assert f"line 2: field 'question' is not a question of {gsm8k_dir / 'test.jsonl'}" in message
    assert "line 3: field '6b_verification.is_correct' is missing or not a boolean" in message


# ------------------------------------------------------------------------------------ chat prompts


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from llmac.models import train_tiny_tokenizer

    return train_tiny_tokenizer(["1 + 2 = 3\nAnswer: 3", "Be brief."])


def test_format_prompt_uses_the_chat_template(tiny_tokenizer):
    assert format_prompt(tiny_tokenizer, "1 + 2 =") == "<|user|>1 + 2 =\n<|assistant|>"


def test_format_prompt_system_prompt_and_no_template(tiny_tokenizer):
    tiny_tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer)
    assert tiny_tokenizer.chat_template is None
    assert format_prompt(tiny_tokenizer, "1 + 2 =") == "1 + 2 ="
    assert format_prompt(tiny_tokenizer, "1 + 2 =", system_prompt="Be brief.") == "Be brief.\n\n1 + 2 ="

    tiny_tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    assert (
        format_prompt(tiny_tokenizer, "1 + 2 =", system_prompt="Be brief.")
        == "[system]Be brief.[user]1 + 2 =[assistant]"
    )


def test_build_prompts_adds_or_replaces_the_prompt_column(tiny_tokenizer):
    dataset = Dataset.from_dict({"question": ["1 + 2 =", "5 - 7 ="], "answer": ["3", "-2"]})
    with_prompts = build_prompts(dataset, tiny_tokenizer)
    assert with_prompts.column_names == ["question", "answer", "prompt"]
    assert with_prompts["prompt"] == ["<|user|>1 + 2 =\n<|assistant|>", "<|user|>5 - 7 =\n<|assistant|>"]
    again = build_prompts(with_prompts.map(lambda row: {"prompt": "old"}), tiny_tokenizer)
    assert again["prompt"] == with_prompts["prompt"]

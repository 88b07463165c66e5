"""The cloud commands of the Get started pages and how-to guides, run as a reader types them
against the loopback stand-in of Google Cloud: the docs' words with PROJECT, REGION and BUCKET
filled in (tests/docs_blocks.py) and the stand-in's address added (`--api-endpoint URL`, or
`?api_endpoint=URL` on a `vertex://` registry URI). A renamed option, a refused value or a request
the services would refuse fails here. Each block runs in order on one stand-in, so
`schedule pause` finds the schedule `create` made."""

import io
import os

import pytest

from tests import docs_blocks
from tlp.pipelines import cli

CLOUD_BLOCKS = [(page, index, block) for page, index, block in docs_blocks.all_blocks()
                if any(docs_blocks.kind(command) == "tlp-cloud" for command in docs_blocks.commands(block))]


def _photo(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (40 * seed % 255, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _prepare(standin):
    """What a reader has done before these pages: the bucket exists, the photos are uploaded,
    and a model `cats` has versions in the Vertex AI Model Registry."""
    from tests.cloud.test_deploy import seed_model

    standin.add_bucket(docs_blocks.PLACEHOLDERS["BUCKET"])
    for number in range(4):
        standin.put_object(f"gs://tlp-bucket/photos/cats/{number}.jpg", _photo(number))
        standin.put_object(f"gs://tlp-bucket/photos/dogs/{number}.jpg", _photo(number + 4))
    seed_model(standin)


def _with_standin(words: list[str], url: str) -> list[str]:
    if words[1] == "predict":  # its registry URI carries the endpoint
        return [f"{word}?api_endpoint={url}" if word.startswith("vertex://") else word for word in words]
    return [*words, "--api-endpoint", url]


def test_the_docs_have_cloud_blocks_on_the_pages_that_need_them():
    pages = {page for page, _, _ in CLOUD_BLOCKS}
    assert pages >= {"get-started/first-vertex-run.md", "how-to/schedule.md", "how-to/deploy.md",
                     "how-to/dataflow.md", "how-to/tune.md", "how-to/batch-predict.md"}, pages


@pytest.mark.parametrize("page, index, block", CLOUD_BLOCKS, ids=[f"{p}#{i}" for p, i, _ in CLOUD_BLOCKS])
def test_a_cloud_block_runs_against_the_standin(standin, capsys, monkeypatch, tmp_path, page, index, block):
    from google.cloud.aiplatform import jobs

    monkeypatch.setattr(jobs, "_JOB_WAIT_TIME", 0.05)
    monkeypatch.chdir(tmp_path)
    _prepare(standin)
    variables = {}
    for command in docs_blocks.commands(block):
        kind = docs_blocks.kind(command)
        if kind == "assign":
            name, value = command.split("=", 1)
            variables[name] = docs_blocks.fill(value, {})[0]
            continue
        if kind != "tlp-cloud":  # make, gcloud: see tests/pipeline/test_docs_commands.py
            continue
        words = _with_standin(docs_blocks.fill(command, variables), standin.url)
        code = cli.main(words[1:])
        output = capsys.readouterr()
        assert code == 0, f"{page}: `{command}` exited {code}:\n{output.out[-3000:]}\n{output.err[-3000:]}"
    assert os.getcwd() == str(tmp_path)

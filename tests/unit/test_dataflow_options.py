"""--data-prep-runner dataflow: the job the data-prep step asks Dataflow for."""

import pytest

from tests.conftest import settings
from tlp.components.lib.dataprep import prepare
from tlp.components.lib.specs import ConfigError


def test_direct_is_the_default_and_needs_no_job():
    assert prepare.dataflow_job(settings().data, "/tmp/out") is None


def test_the_job_takes_the_step_settings_and_a_temp_folder_beside_the_output():
    data = settings(data_prep_runner="dataflow", dataflow_project="p", dataflow_region="europe-west4",
                    dataflow_max_workers=7, dataflow_machine_type="n2-standard-8",
                    dataflow_service_account="sa@p.iam.gserviceaccount.com",
                    dataflow_network="projects/1/global/networks/vpc", dataflow_image="r/tlp-dataflow:1").data
    job = prepare.dataflow_job(data, "gs://bucket/root/run-1/data-prep/dataset")
    assert job.temp_location == "gs://bucket/root/run-1/data-prep/dataflow"
    options = prepare.beam_options(0, job).get_all_options()
    assert options["runner"] == "DataflowRunner" and options["project"] == "p"
    assert options["region"] == "europe-west4" and options["max_num_workers"] == 7
    assert options["machine_type"] == "n2-standard-8" and options["sdk_container_image"] == "r/tlp-dataflow:1"
    assert options["service_account_email"] == "sa@p.iam.gserviceaccount.com" and options["network"] == "vpc"
    assert options["temp_location"].startswith("gs://bucket/root/run-1/data-prep/dataflow/")


def test_a_local_run_without_project_or_gs_temp_is_refused_with_the_flags_to_give(tmp_path):
    data = settings(data_prep_runner="dataflow").data
    with pytest.raises(ConfigError, match="--dataflow-project .*--dataflow-region"):
        prepare.prepare_dataset("sample:10", str(tmp_path / "out"), dataflow=prepare.dataflow_job(data, "/local"))
    job = prepare.DataflowJob("p", "r", str(tmp_path), image="i")
    with pytest.raises(ConfigError, match="must be a gs:// path"):
        prepare.prepare_dataset("sample:10", str(tmp_path / "out"), dataflow=job)
    assert not (tmp_path / "out").exists()

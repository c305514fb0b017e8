"""End to end on this machine: ToolTuneJob → Job → the real trainer → SeaweedFS → pod killed → resumed.

The operator runs against the emulated API, the test kubelet runs `tooltune train` as a local process
(the real CLI and recipe, the built-in tiny model), storage is a real SeaweedFS server. The pod is
evicted after its first checkpoints reach the bucket; the next pod must continue from the newest
complete checkpoint and the job must end Succeeded with its model, report and lineage in the bucket.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from tooltune_operator.settings import Settings

from tests.fixtures.cluster import K8s, operator_kube
from tests.fixtures.s3 import S3Server
from tests.fixtures.tiny import tool_calling_dataset
from tests.harness.emulator import PODS, SECRETS, TTJ
from tests.harness.kopf_runner import KopfRunner
from tests.harness.kubelet import Kubelet
from tests.harness.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = "default"
EVERY = 4  # checkpoint interval, in steps
RUN_TIMEOUT = 420  # the whole run, with two pods importing torch on a busy 2-core machine


def job_spec(bucket: str, endpoint: str) -> dict[str, Any]:
    return {
        "baseModel": "tooltune/tiny-llama",
        "dataset": {"train": f"s3://{bucket}/data/train.jsonl", "validationSplit": 0.1},
        "hyperparameters": {
            "epochs": 2,
            "batchSize": 4,
            "gradientAccumulationSteps": 1,
            "learningRate": 3e-3,
            "maxSeqLength": 256,
            "loggingSteps": 1,
            "lora": {"r": 8, "alpha": 16},
        },
        "checkpoints": {"everySteps": EVERY, "keep": 2},
        "evaluation": {"everySteps": EVERY, "maxExamples": 4},
        "output": {"uri": f"s3://{bucket}/models/e2e/"},
        "storage": {"endpoint": endpoint, "credentialsSecret": "s3-credentials"},
        "resources": {"gpus": 0},
        "backoffLimit": 2,
    }


def pods_of(k8s: K8s, name: str) -> list[dict[str, Any]]:
    pods = [p for p in k8s.cluster.list(PODS) if p["metadata"]["labels"].get("tooltune.dev/job") == name]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"] + p["metadata"]["name"])


def test_trainer_writes_checkpoints_survives_an_eviction_and_ends_with_model_and_lineage(
    k8s: K8s, s3_server: S3Server, kopf_operator: Callable[..., KopfRunner], tmp_path: Path
) -> None:
    bucket = s3_server.create_bucket("e2e")
    s3 = s3_server.client()
    lines = "".join(json.dumps(example) + "\n" for example in tool_calling_dataset(48))
    s3.put_object(Bucket=bucket, Key="data/train.jsonl", Body=lines.encode())
    k8s.cluster.create(SECRETS, s3_server.credentials_secret("s3-credentials"), NS)
    kubelet = Kubelet(k8s.cluster, tmp_path / "kubelet").start()
    try:
        memo = kopf.Memo(
            kube=operator_kube(k8s.api),
            settings=Settings(metrics_port=0, trainer_metrics_port=0, progress_interval_seconds=1),
        )
        kopf_operator("tooltune_operator.handlers", memo=memo)
        k8s.custom.create_namespaced_custom_object(
            "tooltune.dev", "v1alpha1", NS, "tooltunejobs",
            {"apiVersion": "tooltune.dev/v1alpha1", "kind": "ToolTuneJob", "metadata": {"name": "e2e"},
             "spec": job_spec(bucket, s3_server.endpoint)},
        )  # fmt: skip
        status = lambda: (k8s.cluster.get(TTJ, NS, "e2e") or {}).get("status", {})  # noqa: E731

        # Checkpoints reach the bucket and the status while the first pod trains.
        checkpointed = lambda: (status().get("checkpoints") or {}).get("latestStep", 0) >= EVERY  # noqa: E731
        wait_for(
            checkpointed, timeout=RUN_TIMEOUT, what="a checkpoint in status", describe=status, interval=0.2
        )
        first = pods_of(k8s, "e2e")[0]["metadata"]["name"]
        checkpoint = status()["checkpoints"]["latestStep"]
        kubelet.kill_pod(first, NS, disruption=True)  # an eviction: does not count against backoffLimit
        # What the killed pod left: its newest complete checkpoint (manifest written last) and its last step.
        listed = s3.list_objects_v2(Bucket=bucket, Prefix="models/e2e/checkpoints/").get("Contents", [])
        complete = [
            int(m) for m in re.findall(r"step-(\d+)/manifest\.json", " ".join(o["Key"] for o in listed))
        ]
        epochs = [float(e) for e in re.findall(r"'epoch': '([\d.]+)'", kubelet.logs(first, NS))]
        steps_per_epoch = (
            status()["progress"]["totalSteps"] / job_spec(bucket, "")["hyperparameters"]["epochs"]
        )
        reached = max(round(max(epochs, default=0) * steps_per_epoch), status()["progress"]["step"])

        # The next pod resumes from that checkpoint, not from step 0.
        second = wait_for(lambda: pods_of(k8s, "e2e")[1:], timeout=60, what="a second pod")[0]["metadata"][
            "name"
        ]
        wait_for(lambda: status().get("phase") == "Succeeded", timeout=RUN_TIMEOUT, what="Succeeded",
                 describe=lambda: (status(), kubelet.logs(second, NS)[-3000:]), interval=0.5)  # fmt: skip
        log = kubelet.logs(second, NS)
        resumed = re.search(r"resuming from s3://\S+/checkpoints/step-(\d+)", log)
        assert resumed, log[-3000:]
        resumed_at = int(resumed.group(1))
        assert resumed_at == max(complete) >= checkpoint, (resumed_at, complete, checkpoint)
        # Lost: at most one checkpoint interval, plus the steps run while the newest checkpoint was still
        # uploading (training never waits for an upload; the tiny model runs many steps per second).
        assert reached - resumed_at <= 2 * EVERY, (reached, resumed_at)

        final = status()
        assert final["output"]["uri"].rstrip("/").endswith("models/e2e/final")
        assert final["checkpoints"]["count"] >= 1 and final["checkpoints"]["latestUri"].startswith(
            f"s3://{bucket}/"
        )
        assert final["retries"] == 0, "an eviction must not count as a failed attempt"
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="models/e2e/")["Contents"]}
        artifacts = [
            "adapter_model.safetensors",
            "adapter_config.json",
            "tokenizer.json",
            "chat_template.jinja",
        ]
        for name in [*artifacts, "evaluation.json", "lineage.json"]:
            assert f"models/e2e/final/{name}" in keys, sorted(keys)
        assert any(k.startswith("models/e2e/checkpoints/") and k.endswith("manifest.json") for k in keys)
        lineage = json.loads(s3.get_object(Bucket=bucket, Key="models/e2e/final/lineage.json")["Body"].read())
        assert (
            lineage["baseModel"] == "tooltune/tiny-llama" if "baseModel" in lineage else lineage["base_model"]
        )
        assert f"s3://{bucket}/data/train.jsonl" in json.dumps(lineage)

        # The adapter from the bucket loads onto the tiny base model and generates.
        local = tmp_path / "from-bucket"
        for key in keys:
            if key.startswith("models/e2e/final/"):
                target = local / key.removeprefix("models/e2e/final/")
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(target))
        from peft import AutoPeftModelForCausalLM
        from transformers import AutoTokenizer

        model = AutoPeftModelForCausalLM.from_pretrained(local)
        tokenizer = AutoTokenizer.from_pretrained(local)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Mark task_3 as complete"}], add_generation_prompt=True,
            tokenize=True, return_dict=True, return_tensors="pt",
        )  # fmt: skip
        output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        assert output.shape[1] > prompt["input_ids"].shape[1]
    finally:
        kubelet.stop()

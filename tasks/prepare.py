"""Prefect tasks that prepare what the methods learn from: the data split, and the teacher's
features and soft labels (one :class:`~lab.embedded.EmbeddedSplit`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from lab.data import DataRequest, Dataset
from lab.embedded import EmbeddedSplit
from lab.methods import FeatureMethod
from lab.setfit_body import BodyJob, fine_tuned_body
from lab.teacher import TeacherOutput, TeacherOutputs, TeacherSpec, cached_teacher_outputs, unfitted_outputs


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(request: DataRequest) -> Dataset:
    """Load and split the data set; bad names, columns or labels fail here, before any work."""
    data = request.load()
    few = f" ({request.per_label} per label)" if request.per_label else ""
    get_run_logger().info(
        "data %s: %d train%s / %d test, %d classes, hash %s",
        data.name,
        len(data.train_texts),
        few,
        len(data.test_texts),
        data.num_classes,
        data.content_hash[:12],
    )
    return data


@task(
    name="teacher-shard", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="teacher-shard-{start}"
)
def teacher_shard(spec: TeacherSpec, label_names: tuple[str, ...], texts: list[str], start: int) -> TeacherOutput:
    """One shard of teacher inference on a Dask worker (the worker loads the model once)."""
    return unfitted_outputs(spec, label_names, texts)


def teacher_outputs(data: Dataset, spec: TeacherSpec, cache_root: str, shard_size: int) -> TeacherOutputs:
    """Soft labels and features of the teacher, cached by data hash + model + settings.

    Called from a flow: on a cache miss, sets larger than ``shard_size`` texts are split into
    shards mapped across the Dask workers; smaller ones run in the flow's process.
    """
    names = tuple(data.label_names)

    def sharded(texts: Sequence[str]) -> TeacherOutput:
        starts = list(range(0, len(texts), shard_size))
        futures = teacher_shard.map(
            spec=unmapped(spec),
            label_names=unmapped(names),
            texts=[list(texts[i : i + shard_size]) for i in starts],
            start=starts,
        )
        parts = [f.result() for f in futures]
        return TeacherOutput(np.concatenate([p.logits for p in parts]), np.concatenate([p.features for p in parts]))

    big = len(data.train_texts) + len(data.test_texts) > shard_size
    out = cached_teacher_outputs(data, spec, cache_root, infer=sharded if big else None)
    get_run_logger().info(
        "teacher %s outputs ready (cache key %s%s)", spec.kind, out.key[:12], ", sharded across workers" if big else ""
    )
    return out


@task(name="setfit-body", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def setfit_body(job: BodyJob, root: str) -> str:
    """The sentence encoder fine-tuned contrastively on the job's training texts (SetFit's body
    phase), stored by content under the artifact root; the folder the teacher then reads."""
    log = get_run_logger()
    return str(fine_tuned_body(job, root, log=log.info))


BodyOf = Callable[[Dataset], BodyJob | None]


def embeddings(
    method: FeatureMethod[Any, Any], params: Any, root: str, body_of: BodyOf | None = None
) -> tuple[Dataset, EmbeddedSplit]:
    """A feature method's data: the split (a task), the encoder's SetFit body when the method
    (or ``body_of``, a caller that knows better which texts the body may read) asks for one (a
    task, cached by content) and the teacher's outputs (cached, sharded over the workers)."""
    data = prepare_data(method.data_request(params))
    spec = method.teacher(params)
    body = body_of(data) if body_of is not None else method.body_job(params, data)
    if body is not None:  # a fine-tuned encoder replaces the frozen one
        spec = dataclasses.replace(spec, model=setfit_body(body, root))
    outputs = teacher_outputs(data, spec, root, method.shard_size(params))
    return data, EmbeddedSplit.of(data, outputs, spec)


def embedded_split(
    method: FeatureMethod[Any, Any], params: Any, root: str, body_of: BodyOf | None = None
) -> tuple[Dataset, EmbeddedSplit]:
    """:func:`embeddings` in the method's own view (e.g. with a validation hold-out)."""
    data, embedded = embeddings(method, params, root, body_of)
    return data, method.split(params, embedded)

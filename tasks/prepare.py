"""Prefect tasks that prepare what the students learn from: the data split and the teacher's outputs."""

from __future__ import annotations

import numpy as np
from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from .data import Dataset, few_shot, load_dataset
from .teacher import TeacherOutput, TeacherOutputs, TeacherSpec, cached_teacher_outputs, unfitted_outputs


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(name_or_url: str, *, train_size: int | None, test_size: int | None, seed: int,
                 text_column: str | None = None, label_column: str | None = None) -> Dataset:
    """Load and split the data set; bad names, columns or labels fail here, before any work."""
    data = load_dataset(name_or_url, train_size=train_size, test_size=test_size, seed=seed,
                        text_column=text_column, label_column=label_column)
    get_run_logger().info("data %s: %d train / %d test, %d classes, hash %s", data.name,
                          len(data.train_texts), len(data.test_texts), data.num_classes,
                          data.content_hash[:12])
    return data


@task(name="prepare-few-shot", cache_policy=NO_CACHE)
def prepare_few_shot(name_or_url: str, *, per_label: int, test_size: int | None, seed: int,
                     text_column: str | None = None, label_column: str | None = None) -> Dataset:
    """``per_label`` examples per class from the train split; the rest of it as the test set."""
    data = few_shot(load_dataset(name_or_url, seed=seed, text_column=text_column, label_column=label_column),
                    per_label, test_size=test_size, seed=seed)
    get_run_logger().info("few-shot %s: %d train (%d per label) / %d test, hash %s", data.name,
                          len(data.train_texts), per_label, len(data.test_texts), data.content_hash[:12])
    return data


@task(name="teacher-shard", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      task_run_name="teacher-shard-{start}")
def teacher_shard(spec: TeacherSpec, label_names: tuple[str, ...], texts: list[str],
                  start: int) -> TeacherOutput:
    """One shard of teacher inference on a Dask worker (the worker loads the model once)."""
    return unfitted_outputs(spec, label_names, texts)


def teacher_outputs(data: Dataset, spec: TeacherSpec, cache_root: str, shard_size: int) -> TeacherOutputs:
    """Soft labels and features of the teacher, cached by data hash + model + settings.

    Called from a flow: on a cache miss, sets larger than ``shard_size`` texts are split into
    shards mapped across the Dask workers; smaller ones run in the flow's process.
    """
    names = tuple(data.label_names)

    def sharded(texts: list[str]) -> TeacherOutput:
        starts = list(range(0, len(texts), shard_size))
        futures = teacher_shard.map(spec=unmapped(spec), label_names=unmapped(names),
                                    texts=[texts[i:i + shard_size] for i in starts], start=starts)
        parts = [f.result() for f in futures]
        return TeacherOutput(np.concatenate([p.logits for p in parts]),
                             np.concatenate([p.features for p in parts]))

    big = len(data.train_texts) + len(data.test_texts) > shard_size
    out = cached_teacher_outputs(data, spec, cache_root, infer=sharded if big else None)
    get_run_logger().info("teacher %s outputs ready (cache key %s%s)", spec.kind, out.key[:12],
                          ", sharded across workers" if big else "")
    return out

"""Trained models in the MLflow model registry, as ``pyfunc`` models that classify raw text.

A registered QD-LLM student or PQC head carries its sentence encoder (the teacher's model folder,
by default the embedded all-MiniLM-L6-v2) beside its own folder; a fine-tune carries its merged
Hugging Face folder. Either answers ``predict(DataFrame with a "text" column, or a list of
str)`` with a ``label`` and a ``probability_<label>`` column per class, so ``mlflow models serve``
and ``mlflow.pyfunc.load_model("models:/qllm-qdllm-sst2@champion")`` work with no lab code in
the caller's hands beyond the installed package.

A flow registers one version per (method, data set, configuration): the best seed's, under
``qllm-<method>-<data set>`` (:func:`register_best`); the compare flow moves the ``champion``
alias onto its best model of each method (:func:`set_champion`). ``qllm predict`` and the hardware
flow take ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` where they take a run id
(:func:`resolve`).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from .artifacts import download_folder, hash_json
from .results import TrainingResult
from .teacher import TeacherSpec, feature_reader, resolve_model
from .tracking import with_retries

CHAMPION = "champion"
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
EXAMPLE = pd.DataFrame({"text": ["a gripping, funny and moving film", "dull, and far too long"]})
LABELS_FILE = "labels.json"  # beside a merged model: its label names and token limit
BATCH = 64  # texts per forward pass of a merged model


class RegistryError(ValueError):
    """A ``models:/`` reference that names no registered model, alias or version."""


class TextClassifier(Protocol):
    """What a registered model wraps: class probabilities of raw texts."""

    label_names: tuple[str, ...]

    def probabilities(self, texts: Sequence[str]) -> np.ndarray: ...


class QuantumText:
    """A saved QD-LLM student or PQC head behind the features it was trained on. ``encoder``:
    a copy of the teacher's model folder (a registered model's own); ``None``: the folder its
    ``teacher.json`` names (the embedded MiniLM by default)."""

    def __init__(self, folder: Path, encoder: Path | None = None) -> None:
        from qcore.models import load_model

        meta = json.loads((folder / "teacher.json").read_text())
        spec = TeacherSpec(**meta["teacher"])
        self.label_names = tuple(meta["label_names"])
        self.features = feature_reader(spec if encoder is None else replace(spec, model=str(encoder)), self.label_names)
        self.model = load_model(folder).eval()

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(torch.as_tensor(self.features(texts), dtype=torch.float32))
            return torch.softmax(logits, -1).numpy()


class MergedText:
    """A fine-tune merged into plain weights (LoRA, QPA, QTHA): its tokenizer and classifier,
    with the label names and token limit of :data:`LABELS_FILE`."""

    def __init__(self, folder: Path) -> None:
        import transformers

        from .sentence_classifier import load_classifier

        meta = json.loads((folder / LABELS_FILE).read_text())
        self.label_names, self.max_length = tuple(meta["label_names"]), int(meta["max_length"])
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = load_classifier(folder).eval()

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                batch = self.tokenizer(
                    list(texts[start : start + BATCH]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                parts.append(torch.softmax(self.model(**batch).logits.float(), -1).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, len(self.label_names)), dtype=np.float32)


def predictions(classifier: TextClassifier, texts: Sequence[str]) -> pd.DataFrame:
    """A row per text: the predicted ``label`` and a ``probability_<label>`` per class."""
    probs = classifier.probabilities(list(texts)).reshape(len(texts), len(classifier.label_names))
    frame = pd.DataFrame({"label": [classifier.label_names[i] for i in probs.argmax(-1)]})
    for i, name in enumerate(classifier.label_names):
        frame[f"probability_{name}"] = probs[:, i].astype(np.float64)
    return frame


def texts_of(model_input: Any) -> list[str]:
    """The texts of a ``predict`` call: a DataFrame's ``text`` column (or its only column: MLflow
    hands a list of str over as one), or a list of str."""
    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            return [str(t) for t in model_input["text"]]
        if len(model_input.columns) != 1:
            raise ValueError(f"give a DataFrame with a 'text' column; got columns {list(model_input.columns)}")
        model_input = model_input.iloc[:, 0]
    return [str(t) for t in model_input]


class TextModel(PythonModel):
    """The ``pyfunc`` of a registered model: its artifacts ``model`` and ``encoder`` (a quantum
    model) or ``merged`` (a fine-tune) are loaded once, when the model is loaded."""

    def load_context(self, context: Any) -> None:
        artifacts = context.artifacts
        self.classifier: TextClassifier = (
            MergedText(Path(artifacts["merged"]))
            if "merged" in artifacts
            else QuantumText(Path(artifacts["model"]), Path(artifacts["encoder"]))
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``model_input``: MLflow's schema check hands any input over as a DataFrame (a list of
        str as one unnamed column); the hint says so, and asks MLflow for no schema of its own."""
        return predictions(self.classifier, texts_of(model_input))


# --- registering ----------------------------------------------------------------------------------


def registered_name(method: str, dataset: str) -> str:
    """``qllm-<method>-<data set>``; a data set given by path or URL by its file's stem and a
    short hash of the whole URL, so two files of one name stay apart."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", dataset):
        return f"qllm-{method}-{dataset}"
    stem = Path(dataset.rstrip("/").rsplit("/", 1)[-1]).stem
    return f"qllm-{method}-{re.sub(r'[^A-Za-z0-9_-]', '_', stem)}-{hash_json(dataset)[:8]}"


def configuration(job: Mapping[str, Any]) -> str:
    """A training's settings without its seeds: the trainings a flow's seeds repeat share one."""
    drop = ("seed", "name")

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if not (k in drop or k.endswith("_seed"))}
        return value

    return hash_json(strip(job))


def trained_folder(result: TrainingResult) -> str | None:
    """Where a result's classifier of raw text is stored: a quantum model, a merged fine-tune."""
    return result.model_url or result.files.get("merged")


def best_per_configuration(results: Sequence[Any]) -> list[TrainingResult]:
    """The most accurate seed of each configuration among the results that stored a model."""
    best: dict[tuple[str, str], TrainingResult] = {}
    for r in results:
        if not isinstance(r, TrainingResult) or trained_folder(r) is None or "accuracy" not in r.metrics:
            continue
        key = (r.method, configuration(r.job))
        if key not in best or r.accuracy > best[key].accuracy:
            best[key] = r
    return list(best.values())


def register_best(results: Sequence[Any], *, dataset: str, label_names: Sequence[str], flow: str) -> list[ModelVersion]:
    """Register the best seed of each configuration (:func:`best_per_configuration`) of the
    active MLflow run's results; ``results`` may hold failures and classical rows, skipped."""
    return [register(r, dataset=dataset, label_names=label_names, flow=flow) for r in best_per_configuration(results)]


def crown_best(
    results: Mapping[str, Sequence[Any]], *, dataset: str, label_names: Sequence[str], flow: str
) -> dict[str, ModelVersion]:
    """For each method (id → its results, one per seed): register its most accurate stored model
    and give it the :data:`CHAMPION` alias; methods that stored no model (classical baselines,
    federated runs) are left out."""
    champions = {}
    for method, rows in results.items():
        if stored := best_per_configuration(rows):
            best = max(stored, key=lambda r: r.accuracy)
            champions[method] = register(best, dataset=dataset, label_names=label_names, flow=flow)
            set_champion(champions[method])
    return champions


def register(result: TrainingResult, *, dataset: str, label_names: Sequence[str], flow: str) -> ModelVersion:
    """``result``'s model as a version of ``qllm-<method>-<data set>``, logged as a ``pyfunc``
    in the active MLflow run (the flow's parent run); a model registered before from the same
    stored training (a re-run of cached trainings) is that version, not a new one."""
    name = registered_name(result.method, dataset)
    url = str(trained_folder(result))
    if (known := registered_from(name, url)) is not None:
        return known
    run = mlflow.active_run()
    assert run is not None, "register inside the flow's MLflow run"
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = stage_artifacts(result, Path(tmp), label_names)
        # Not retried: a second attempt after a half-finished one would log the model twice.
        info = mlflow.pyfunc.log_model(
            name=re.sub(r"[/:.%\"']", "-", result.name),  # characters MLflow refuses in a model's name
            python_model=TextModel(),
            artifacts=artifacts,
            signature=signature(classifier_of(artifacts)),
            input_example=EXAMPLE,
            pip_requirements=[f"qllm-lab=={version('qllm-lab')}"],  # skips MLflow's slow inference of them
        )
    tags = {
        "qllm.method": result.method,
        "qllm.dataset": dataset,
        "qllm.flow": flow,
        "qllm.source_run": run.info.run_id,
        "qllm.training": result.name,
        "qllm.seed": str(result.seed),
        "qllm.trained_model": url,
        "test_accuracy": f"{result.accuracy:.6g}",
    }
    registered = mlflow.register_model(info.model_uri, name, tags=tags)
    description = (
        f"{result.name} (seed {result.seed}, test accuracy {result.accuracy:.4f}) from the {flow} flow's "
        f"MLflow run {run.info.run_id}. Classifies raw text: predict(a DataFrame with a 'text' column) "
        "gives the label and each class's probability."
    )
    client = mlflow.MlflowClient()
    return with_retries(
        lambda: client.update_model_version(name, registered.version, description=description),
        what="describe model version",
    )


def signature(classifier: TextClassifier) -> Any:
    """Input: a column of strings, unnamed, so that a list of str passes MLflow's schema check as
    well as a DataFrame with a ``text`` column; output: :func:`predictions`' columns."""
    texts = EXAMPLE["text"].tolist()
    return mlflow.models.infer_signature(texts, predictions(classifier, texts))


def registered_from(name: str, url: str) -> ModelVersion | None:
    """The version of ``name`` registered from the stored training at ``url``, if any."""
    client = mlflow.MlflowClient()
    versions = with_retries(lambda: client.search_model_versions(f"name = '{name}'"), what="search model versions")
    return next((v for v in versions if v.tags.get("qllm.trained_model") == url), None)


def stage_artifacts(result: TrainingResult, folder: Path, label_names: Sequence[str]) -> dict[str, str]:
    """The registered model's artifacts, downloaded into ``folder``: a quantum model's folder and
    a copy of its encoder, or a merged fine-tune with its :data:`LABELS_FILE`."""
    if result.model_url is not None:
        model = download_folder(result.model_url, folder / "model")
        spec = TeacherSpec(**json.loads((model / "teacher.json").read_text())["teacher"])
        return {"model": str(model), "encoder": str(resolve_model(spec.model))}
    merged = download_folder(result.files["merged"], folder / "merged")
    meta = {"label_names": list(label_names), "max_length": int(result.job["max_length"])}
    (merged / LABELS_FILE).write_text(json.dumps(meta))
    return {"merged": str(merged)}


def classifier_of(artifacts: Mapping[str, str]) -> TextClassifier:
    """The classifier a registered model's artifacts hold (as :class:`TextModel` loads them)."""
    if "merged" in artifacts:
        return MergedText(Path(artifacts["merged"]))
    return QuantumText(Path(artifacts["model"]), Path(artifacts["encoder"]))


def set_champion(version: ModelVersion) -> None:
    """Point ``version``'s registered model's ``champion`` alias at it."""
    client = mlflow.MlflowClient()
    with_retries(lambda: client.set_registered_model_alias(version.name, CHAMPION, version.version), what="set alias")


# --- resolving models:/ references ----------------------------------------------------------------


def is_model_uri(source: str) -> bool:
    return source.startswith("models:/")


def resolve(uri: str) -> ModelVersion:
    """The version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names; refused with the
    value, and what the registry does hold, when there is none."""
    match = MODEL_URI.match(uri)
    if match is None:
        raise RegistryError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = match["name"], match["alias"], match["version"]
    client = mlflow.MlflowClient()
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, number)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise RegistryError(
            f"no registered model {name!r} (from {uri!r}); registered: {', '.join(known) or 'none'}"
        ) from None
    what = f"alias {alias!r}" if alias is not None else f"version {number}"
    aliases = ", ".join(sorted(model.aliases)) or "none"
    raise RegistryError(f"registered model {name!r} has no {what} (from {uri!r}); its aliases: {aliases}")


@contextmanager
def downloaded_artifact(version: ModelVersion, key: str) -> Iterator[Path]:
    """A registered version's artifact ``key`` (``model``, ``encoder`` or ``merged``) in a
    temporary folder, removed when the block ends; a ``KeyError`` if it holds none. MLflow
    stores it under a path of its own choosing, which its ``MLmodel`` file names."""
    client = mlflow.MlflowClient()
    flavor = mlflow.models.Model.load(f"models:/{version.name}/{version.version}").flavors["python_function"]
    path = flavor.get("artifacts", {})[key]["path"]
    root = with_retries(lambda: client.get_model_version_download_uri(version.name, version.version), what="find model")
    with tempfile.TemporaryDirectory(prefix="qllm-registered-") as target:
        yield Path(
            with_retries(
                lambda: mlflow.artifacts.download_artifacts(artifact_uri=f"{root.rstrip('/')}/{path}", dst_path=target),
                what="download model",
            )
        )


def load(uri: str) -> Any:
    """The ``pyfunc`` model ``uri`` names, after :func:`resolve` has refused unknown names."""
    found = resolve(uri)
    return mlflow.pyfunc.load_model(f"models:/{found.name}/{found.version}")

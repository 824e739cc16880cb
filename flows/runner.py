"""How flows run their tasks: the Dask task runner (an existing scheduler, or a temporary
LocalCluster, decided when a flow starts, never at import), the Prefect API the workers share,
gathering results that may have failed, and a clean stop on a signal."""

from __future__ import annotations

import atexit
import contextvars
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import prefect
import psutil
from mlflow.tracking import MlflowClient
from prefect import Flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.flows import FlowStateHook
from prefect.futures import PrefectFuture
from prefect.settings import PREFECT_API_URL, get_current_settings
from prefect.task_runners import TaskRunner
from prefect_dask import DaskTaskRunner

from lab import tracking
from lab.reach import check_places
from lab.results import FailedTraining, Outcome, Trained, job_record
from lab.runtime import Runtime

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.states import State

T = TypeVar("T")


# A Dask worker preload (the text of a module): each worker process of a temporary cluster leaves
# the run's process group. A terminal's Ctrl-C and ``timeout`` signal the whole group, and a worker
# ended by them was started again by its nanny, which a stop then waited for; the run ends its
# workers itself (:func:`kill_own_workers`), and a worker whose nanny dies exits with it.
OWN_PROCESS_GROUP = "import os; os.setpgid(0, 0)"


class LabTaskRunner(DaskTaskRunner):
    """The flows' Dask task runner. Built with no address, it decides where its tasks go when
    the flow starts, not when the flow's module is imported: ``QLLM_DASK_ADDRESS`` if set, else
    a temporary LocalCluster of single-threaded worker processes, one per core (quantum
    simulation scales by processes, not threads), with patient timeouts.

    It prints the Dask dashboard's address once it has started or reached its cluster: in the
    flow's log (the flows log prints), so the Prefect UI shows it too.

    The cluster starts at the first submission; a lock makes that one cluster when several of
    the flow's threads submit at once (:func:`at_once`), where prefect_dask would start one each.
    """

    _starting = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._copies: list[weakref.ref[LabTaskRunner]] = []  # the runners running this one's flows (unhashable)
        self._submitted: weakref.WeakSet[Any] = weakref.WeakSet()  # the Dask futures of its tasks still held

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with a task's flow (a task made at run time is pickled by value): without its weak
        references, which do not pickle."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_copies", "_submitted")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _copies=[], _submitted=weakref.WeakSet())

    def duplicate(self) -> LabTaskRunner:
        """The copy a flow run runs its tasks on (Prefect's engine enters a duplicate of the flow's
        runner), kept so that :meth:`cancel_all` on the flow's own runner reaches its tasks."""
        copy = cast(LabTaskRunner, super().duplicate())
        self._copies = [ref for ref in self._copies if ref() is not None] + [weakref.ref(copy)]
        return copy

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        future = super().submit(*args, **kwargs)
        self._submitted.add(future.wrapped_future)
        return future

    def cancel_all(self) -> None:
        """Release the Dask tasks of every flow run on this runner: their trainings stop at their
        next epoch (:func:`tasks.train.released`). Prefect's engine calls it on the flow's runner
        as soon as a cancelled or terminated flow has unwound, before it reports the state; the
        client's close released them only after that, 12 s after a cancellation on a loaded machine."""
        for copy in filter(None, (ref() for ref in self._copies)):
            pending = [f for f in list(copy._submitted) if not f.done()]
            if copy._client is None or not pending:
                continue
            try:
                copy._client.cancel(pending, reason="the flow run was stopped")
            except Exception as exc:  # noqa: BLE001 - the scheduler is gone: closing the client releases them
                print(f"WARNING: {len(pending)} Dask tasks not released at once: {type(exc).__name__}: {exc}")

    def __enter__(self) -> LabTaskRunner:
        if not self.address and not self.cluster_kwargs:
            runtime = Runtime()
            if runtime.dask_address:
                self.address = runtime.dask_address
            else:
                patient_comms()
                self.cluster_kwargs = {
                    "n_workers": runtime.dask_workers,
                    "threads_per_worker": 1,
                    "processes": True,
                    "dashboard_address": ":0",
                    "preload": [OWN_PROCESS_GROUP],
                }
        super().__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if isinstance(exc_info[1], (KeyboardInterrupt, TerminationSignal)):
            kill_own_workers()  # a stop: the cluster closes in a second, not in 4 s per busy worker
        if isinstance(exc_info[1], TerminationSignal):  # the process is ending; a Ctrl-C in a notebook is not
            arm_force_stop(exc_info[1].signal, first=0, finished=threading.Event())
            atexit.register(_exit, 0)
        super().__exit__(*exc_info)

    @property
    def client(self) -> Any:
        if self._client is not None:
            return self._client
        with self._starting:
            if self._client is not None:  # another thread started it meanwhile
                return self._client
            client = super().client
            if self._cluster is not None:
                _own_clusters.add(self._cluster)
            try:
                link = client.dashboard_link
            except KeyError:  # a remote scheduler without the dashboard service
                link = None
            print(
                f"Dask dashboard: {link}"
                if link
                else f"Dask scheduler {client.scheduler.address} serves no dashboard (it needs bokeh)"
            )
            if self.address and (warning := prefect_api_warning(client)):
                print(f"WARNING: {warning}")
        return client


_own_clusters: weakref.WeakSet[Any] = weakref.WeakSet()  # the LocalClusters this process started


def kill_own_workers() -> None:
    """End the worker processes of the clusters this process started, at once, their nannies told
    not to start them again. A stop cannot wait for a nanny's polite close (4 s per busy worker),
    nor for workers that the group's SIGTERM ended to be started again. Nothing finished is lost:
    a task's result is committed to its cache when the task finishes."""
    for cluster in list(_own_clusters):
        for nanny in list(cluster.workers.values()):
            nanny.close_gracefully(reason="stopped by a signal")
            if nanny.pid:
                with suppress(ProcessLookupError):
                    os.kill(nanny.pid, signal.SIGKILL)


def _prefect_api_here() -> str | None:
    """The Prefect API this process reports to. The environment first: Prefect's settings object
    is read once, before an enclosing :func:`prefect_api` (a test module's, say) exported its server."""
    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()


def prefect_api_warning(client: Any) -> str | None:
    """What is wrong when workers of an existing cluster know no Prefect API: each then starts a
    temporary Prefect server of its own on first use, and the flow's task runs report there,
    invisible in the UI that shows the flow. ``None`` when every worker knows one."""
    missing = sorted(w for w, url in client.run(_prefect_api_here).items() if not url)
    if not missing:
        return None
    return (
        f"Dask workers {', '.join(missing)} have no PREFECT_API_URL: each starts a Prefect server of "
        f"its own, and their task runs will not appear with this flow run. Start the workers with "
        f"PREFECT_API_URL={_prefect_api_here() or '<your Prefect API>'} in their environment."
    )


def dask_runner(address: str | None = None) -> TaskRunner[Any]:
    """A runner for ``address``, or (``None``) one that decides when the flow starts."""
    runner = LabTaskRunner(address=address) if address else LabTaskRunner()
    # prefect_dask's runner is a TaskRunner of its own future type; TaskRunner's type variable is
    # invariant, so the flow decorator's annotation does not admit it as it is.
    return cast("TaskRunner[Any]", runner)


def check_dask_address(requested: str | None) -> None:
    """Refuse a flow's ``dask_address`` parameter when this run cannot honour it.

    ``qllm run`` builds the flow's task runner from it. A deployment's runner is fixed when the
    worker loads the flow (from ``QLLM_DASK_ADDRESS``), so there the parameter would be ignored
    and the run would go elsewhere without a word."""
    if not requested:
        return
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    actual = getattr(context.task_runner, "address", None) if context else None
    if (actual or "").removeprefix("tcp://") != requested.removeprefix("tcp://"):
        raise ValueError(
            f"dask_address {requested!r} cannot take effect in this run, whose tasks go to "
            f"{actual or 'this process'}: for a deployment, set QLLM_DASK_ADDRESS in the worker's "
            "environment (or the deployment's job_variables.env) and leave dask_address empty"
        )


# Dask's defaults (30 s to connect or answer) drop workers whose process is starved of CPU,
# which a laptop or a 2-core box running more simulations than cores does: the scheduler then
# forgets the worker, its nanny shuts down, and a flow waits forever on a cluster with no workers.
PATIENT_TIMEOUTS = {
    "distributed.comm.timeouts.connect": "300s",
    "distributed.comm.timeouts.tcp": "300s",
    "distributed.scheduler.worker-ttl": "30 minutes",
}


def patient_comms() -> None:
    """Generous Dask timeouts for this process and the worker processes it spawns (through the
    environment), unless the user configured them."""
    import dask

    for key, value in PATIENT_TIMEOUTS.items():
        env = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
        if env not in os.environ:
            os.environ[env] = value
            dask.config.set({key: value})


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API this process and its Dask workers share.

    ``PREFECT_API_URL`` (a Prefect server or Cloud) is used as is. Otherwise
    ``QLLM_PREFECT_API_URL``, or else one temporary local server (telemetry off unless
    ``PREFECT_SERVER_ANALYTICS_ENABLED`` says otherwise), is exported as ``PREFECT_API_URL`` for
    the run, so worker processes report to it instead of each starting a server of their own on
    the same database.
    """
    configured = _prefect_api_here()
    if configured:
        yield configured
        return
    url = Runtime().prefect_api_url
    server = None
    if not url:
        # The run's own server sends no usage reports unless the user asked for them: nothing
        # leaves the machine unconfigured, and offline every attempt would log an error.
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        server = session_server()
        server.start(timeout=120)
        url = server.api_url
    os.environ["PREFECT_API_URL"] = url
    try:
        yield url
    finally:
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # send the last log lines before the server goes away
        del os.environ["PREFECT_API_URL"]
        if server is not None:
            server.stop()


def session_server() -> SubprocessASGIServer:
    """Prefect's temporary server, in a session of its own. A terminal's Ctrl-C and ``timeout``
    signal the run's whole process group: a server in that group died before the flow could
    report its crash, and the flow's client then retried it for minutes. :func:`prefect_api`
    stops it, or :func:`stop_on_signals` as a last resort. It is Prefect's one temporary server
    of this process (``SubprocessASGIServer()`` returns it), so the flow's own Prefect client,
    whose settings were read before :func:`prefect_api` exported the address, reports there too.
    (Prefect's server module, 2 s of imports, is loaded only here: a refused command never needs
    it.)"""
    from prefect.server.api.server import SubprocessASGIServer

    class SessionServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            return _server_process(cast(int, self.port))

    return SessionServer()


def _server_process(port: int) -> subprocess.Popen[Any]:
    """Prefect's command for its temporary server (``SubprocessASGIServer._run_uvicorn_command``),
    started in a new session."""
    return subprocess.Popen(
        args=[
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env={
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        },
        start_new_session=True,
    )


# SIGHUP too: a closed terminal hangs up its session, which the temporary server has left
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
FORCE_AFTER = 7.0  # seconds a stopped run may take to unwind before its processes are ended


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP stop a run cleanly: the flow unwinds (Prefect records the crash, the
    task runner closes its cluster, :func:`prefect_api` stops its server, the MLflow parent run
    ends KILLED), whatever is left of it is ended, one line says which MLflow runs were marked,
    and the process exits with 128 + the signal's number, without a traceback. A run that has
    not unwound after :data:`FORCE_AFTER` seconds is ended all the same. Within a flow run,
    Prefect's own SIGTERM handler raises first and sends the signal here once the flow has
    unwound. Only the main thread receives signals: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first = len(tracking.opened_runs())
    received: list[int] = []
    finished = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        if received:  # already stopping: Prefect sends SIGTERM again once its flow has unwound
            return
        received.append(signum)
        arm_force_stop(signum, first, finished)
        kill_own_workers()
        raise KeyboardInterrupt if signum == signal.SIGINT else TerminationSignal(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    except BaseException:
        if not received:
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        _finish_stop(received[0], first)
        finished.set()
        _exit(128 + received[0])


def arm_force_stop(signum: int, first: int, finished: threading.Event) -> None:
    """In :data:`FORCE_AFTER` seconds, unless the process has exited by then, :func:`_force_stop`;
    once per process (the first arming holds). Armed by :func:`stop_on_signals` when ``qllm run``
    hears a signal, and by the task runner when a deployment's flow unwinds from SIGTERM (a Prefect
    cancellation), where Prefect waits 30 s before it kills the process and no hook ends its MLflow
    runs after that; under ``qllm run`` the task runner's arming is then a no-op."""
    with _arming:
        if _armed:
            return
        force = threading.Timer(FORCE_AFTER, _force_stop, (signum, first, finished))
        force.daemon = True  # still armed while the interpreter exits
        force.start()
        _armed.append(force)


_arming = threading.Lock()
_armed: list[threading.Timer] = []  # the process's force-stop timer, once armed (it ends the process)


def _force_stop(signum: int, first: int, finished: threading.Event) -> None:
    """A stop's last resort, when the flow has not unwound in time (a task runner waiting on a
    worker that does not answer, say), or the interpreter has not exited after it: what the
    unwinding would have done, unless it did, then exit."""
    if not finished.is_set():
        _finish_stop(signum, first)
    _exit(128 + signum)


def _exit(code: int) -> NoReturn:
    """Exit now, the output flushed: a stopped run has ended what it started, and the interpreter's
    own exit (its last garbage collection of torch's, MLflow's and Prefect's objects) took 5-10 s
    more, unguarded: the :data:`FORCE_AFTER` timer cannot run once the interpreter finalizes.

    A deployment's flow process that unwound from SIGTERM calls it at exit too (the first of the
    ``atexit`` handlers, registered last; Prefect drains its logs and events before them, and
    exits 0 after a cancellation): a cancelled run's process once took 30 s to finalize under
    load, until Prefect killed it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _finish_stop(signum: int, first: int) -> None:
    """End what a stop left running (the MLflow runs this process opened since :func:`stop_on_signals`
    began, from the ``first``-th on, and every process it started) and say so in one line."""
    runs = tracking.opened_runs()[first:]
    try:
        tracking.end_unfinished(runs)
        client = MlflowClient()
        marked = ", ".join(f"MLflow run {r} marked {client.get_run(r).info.status}" for r in runs)
    except Exception as exc:  # noqa: BLE001 - the store is gone too: say so, without a traceback
        marked = f"MLflow runs {', '.join(runs)} not marked ({type(exc).__name__}: {exc})"
    _end_processes()
    print(f"stopped by {signal.Signals(signum).name}: {marked or 'no MLflow run was open'}", flush=True)


def _end_processes(grace: float = 1.0) -> None:
    """End every process this one started and that is still alive (Dask workers, a server): SIGTERM,
    then SIGKILL after ``grace`` seconds."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.terminate()
    for child in psutil.wait_procs(children, timeout=grace)[1]:
        with suppress(psutil.NoSuchProcess):
            child.kill()


def end_mlflow_runs(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
    """The flows' ``on_crashed`` hook: the flow run's MLflow runs still RUNNING end FAILED. It runs
    in the flow's process when the engine records the crash, or, for a process that died without
    a word (``kill -9``, out of memory), in one the worker starts after it.

    No ``on_cancellation`` hook: the worker runs one in a fresh process that loads the whole flow
    first, which kept a cancelled run CANCELLING 15 s longer. A cancelled process ends its runs
    KILLED itself as it unwinds (:func:`lab.tracking.parent_run`), within :data:`FORCE_AFTER`
    seconds whatever hangs (:meth:`LabTaskRunner.__exit__`)."""
    try:
        tracking.connect(Runtime())
        ended = tracking.end_flow_run(str(flow_run.id), "FAILED")
    except Exception as exc:  # noqa: BLE001 - the store may be gone too: one line, no traceback
        print(f"MLflow runs of flow run {flow_run.id} not marked FAILED: {type(exc).__name__}: {exc}")
        return
    for run_id in ended:
        print(f"MLflow run {run_id} marked FAILED")


CRASH_HOOKS: list[FlowStateHook[..., Any]] = [end_mlflow_runs]  # each flow's on_crashed


def run_from_cli(flow: Flow[Any, dict[str, Any]], params: Any) -> dict[str, Any]:
    """Run ``flow`` on ``params`` as ``qllm run`` does: under one Prefect API (:func:`prefect_api`)
    with its tasks on ``params.dask_address``, or on a temporary LocalCluster, stopped cleanly by a
    signal (:func:`stop_on_signals`). The places its settings name are checked first
    (:func:`lab.reach.check_places`): one that cannot be reached or written is refused in seconds,
    before any server starts."""
    check_places(params.dask_address)
    with stop_on_signals(), prefect_api():
        return flow.with_options(task_runner=dask_runner(params.dask_address))(params)


def mlflow_hint(run_id: str, *, before: str = "", after: str = "") -> str:
    """The closing lines of ``qllm run``: the MLflow run's page, its experiment's training-runs
    view (MLflow 3 opens an experiment on its GenAI overview otherwise) and, for a local store,
    the command that serves the UI those links point to."""
    settings = Runtime()
    info = tracking.with_retries(lambda: MlflowClient(settings.tracking_uri()).get_run(run_id), what="get run").info
    lines = [
        f"\n{before}{tracking.run_line(settings, info)}{after}",
        f"Training runs of its experiment: {tracking.experiment_url(settings, info.experiment_id)}",
    ]
    if not settings.tracking_uri().startswith(("http://", "https://")):
        lines.append(f"Serve the UI with:\n  mlflow ui --backend-store-uri {settings.tracking_uri()}")
    return "\n".join(lines)


def flow_run_tags() -> dict[str, str]:
    """The Prefect flow run this code runs in, as tags of its MLflow parent run: its id and its
    page in the Prefect UI (``PREFECT_UI_URL``, which Prefect derives from the API's address).
    Empty outside a flow run."""
    from prefect.context import FlowRunContext
    from prefect.settings import Settings

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return {}
    flow_run_id = str(context.flow_run.id)
    tags = {"prefect.flow_run_id": flow_run_id}
    # A fresh Settings: the process's own was read before prefect_api exported the run's server.
    if ui := Settings().ui_url:
        tags["prefect.flow_run_url"] = f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"
    return tags


def results_or_failures(futures: Iterable[PrefectFuture[Any]], jobs: Sequence[Any], method: str) -> list[Outcome]:
    """Each training's result, or a :class:`FailedTraining` naming the error once its task has
    used up its retries: one failed point must not take a whole sweep down with it."""
    rows: list[Outcome] = []
    for future, job in zip(futures, jobs, strict=True):
        future.wait()
        rows.append(future.result() if future.state.is_completed() else _failure(future, job, method))
    return rows


def chunk_results_or_failures(future: PrefectFuture[list[Trained]], jobs: Sequence[Any], method: str) -> list[Trained]:
    """A chunk's trainings (:func:`tasks.train.train_chunk`), each its own result or failure; if
    the chunk's task failed as a whole (say its workers were lost too often), a failure per
    training, naming the task's error."""
    future.wait()
    if future.state.is_completed():
        return future.result()
    return [Trained(_failure(future, job, method)) for job in jobs]


def _failure(future: PrefectFuture[Any], job: Any, method: str) -> FailedTraining:
    """The failed task of ``job`` as a :class:`FailedTraining`, its error logged."""
    error = future.result(raise_on_failure=False)
    message = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(future.state.message)
    get_run_logger().error("%s failed: %s", job.name, message)
    return FailedTraining(method, job.name, job.seed, job_record(job), message)


def at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``calls`` at once, each in a thread of this flow with a copy of its context (the flow
    run and its task runner, so each may submit tasks), and return their results in order.

    A tuning study waits for each batch of its trials before it asks for the next: one study
    at a time leaves workers idle behind its slowest trial, several keep the cluster's queue full.
    """
    if not calls:
        return []
    pool = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="flow-call")
    futures = [pool.submit(contextvars.copy_context().run, call) for call in calls]
    wait = True
    try:
        return [f.result() for f in futures]
    except (KeyboardInterrupt, TerminationSignal):
        wait = False  # a stop: the other calls wait on tasks that will not finish now
        raise
    finally:
        pool.shutdown(wait=wait, cancel_futures=True)

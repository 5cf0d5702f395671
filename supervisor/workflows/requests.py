"""The ``workflow`` control request: run, resume, cancel, list (see :mod:`protocol.messages`).

Error codes: ``unknown_workflow``, ``unknown_workflow_run``, ``bad_request`` (items),
``shutting_down``. A ``run`` is answered ``accepted`` only once the workflow run, its items and
its ``workflow_started`` event are committed.
"""

from protocol.messages import WorkflowRequest
from supervisor.runs import Waiter
from supervisor.status import Supervisor
from supervisor.workflows.book import WorkflowRefused
from supervisor.workflows.engine import WorkflowRun


def workflow_request(sup: Supervisor, waiter: Waiter, message: WorkflowRequest) -> None:
    control = sup.control
    try:
        if message.action == "run":
            assert message.name is not None

            def durable(run: WorkflowRun) -> None:
                h = run.header
                control.reply(waiter, "accepted", {
                    "workflow_run_id": run.id, "workflow": h.workflow, "items": h.item_count,
                    "waves": h.waves, "steps": h.steps,
                })  # fmt: skip

            sup.workflows.start(message.name, message.items, durable)
        elif message.action == "list":
            configs = [c.as_dict() for c in sup.workflows.configs().values()]
            control.reply(waiter, "workflows", {"workflows": configs,
                                                "runs": sup.workflows.progress()})  # fmt: skip
        else:
            assert message.workflow_run_id is not None
            data = sup.workflows.control(
                message.action, message.workflow_run_id, sup.kill_on_worker
            )
            control.reply(waiter, "ok", data)
    except WorkflowRefused as exc:
        if exc.code == "bad_request":
            control.bad_requests += 1
        control.reply_error(waiter, exc.code, str(exc))

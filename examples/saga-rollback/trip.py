"""Saga rollbacks: a trip books a flight, a hotel and a car, each step with the undo handler that cancels it.
When a later step fails, ``step.rollback_all`` runs the handlers last-in first-out (car, hotel, flight), each a
durable step of its own (recorded, retried, never run twice once recorded). A trip waiting for its payment can
also be terminated with rollback: ``stepstone workflows instances terminate trip t-3 --rollback``."""

from __future__ import annotations

from typing import Any

from stepstone import NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

RETRIES = {"retries": {"limit": 2, "delay": "1 second", "backoff": "constant"}}


def _book(step: WorkflowStep, what: str, trip: dict[str, Any]) -> Any:
    @step.with_rollback(f"book {what}", RETRIES)
    async def book() -> dict[str, str]:
        if what in trip.get("sold_out", []):
            raise NonRetryableError(f"no {what} left in {trip['city']}", "SoldOut")
        return {"what": what, "booking": f"{what[:3].upper()}-{trip['city'][:3].upper()}-1"}

    @book.undo(config={"retries": {"limit": 5, "delay": "2 seconds"}, "timeout": "1 minute"})
    async def cancel(ctx: Any, error: Any, booking: dict[str, str]) -> str:
        # ctx is the booking step's own context; error is what rollback_all was given
        return f"cancelled {booking['booking']} ({ctx.step['name']}: {error})"

    return book


class TripWorkflow(WorkflowEntrypoint):
    """Params: ``{"city": "Lisbon", "sold_out": ["car"], "pay": true}``."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        trip = event.payload
        bookings = []
        try:
            for what in ("flight", "hotel", "car"):
                bookings.append(await _book(step, what, trip)())
        except NonRetryableError as exc:
            await step.rollback_all(exc)  # car (if booked), hotel, flight: last in, first out
            raise
        if trip.get("pay"):
            await step.wait_for_event("payment", "paid", timeout="1 day")
        return {"booked": [b["booking"] for b in bookings]}

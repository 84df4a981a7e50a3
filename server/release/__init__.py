"""Release policy: which signed version each device is offered (channels, pins, staged rollouts), and
the fleet records and gates that decide when a rollout advances or halts."""

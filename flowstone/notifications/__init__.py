"""Notifications: channel-neutral events, a durable outbox, and Slack / email / log channels."""

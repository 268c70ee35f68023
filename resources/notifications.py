"""The notifications resource: which channels are on, and the durable outbox behind them."""

import os
from datetime import timedelta

import dagster as dg
from dagster_slack import SlackResource
from pydantic import Field

from flowstone.notifications.channels import Channel, EmailChannel, LogChannel, SlackChannel
from flowstone.notifications.events import Notification
from flowstone.notifications.notifier import Notifier
from flowstone.notifications.outbox import Backoff, Outbox


class NotificationsResource(dg.ConfigurableResource):
    """Slack, email and log channels over one durable outbox.

    Slack is on when ``slack`` (a dagster-slack ``SlackResource``) or ``slack_token`` is set;
    email when ``smtp_host`` is set; with neither, notifications go to the log (and the outbox),
    so the demo runs offline.
    """

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the outbox. Default: $FLOWSTONE_NOTIFICATIONS_DB_URL or "
        "SQLite in the instance folder.",
    )
    slack: SlackResource | None = Field(
        default=None, description="A dagster-slack SlackResource whose client posts messages."
    )
    slack_token: str | None = Field(
        default=None, description="Bot token, e.g. dg.EnvVar('SLACK_BOT_TOKEN'), if no `slack`."
    )
    slack_channel: str = Field(default="#flowstone", description="Channel to post to.")
    slack_base_url: str = Field(
        default="https://slack.com/api/", description="Slack Web API base URL (tests use loopback)."
    )
    smtp_host: str | None = Field(default=None, description="SMTP server; unset disables email.")
    smtp_port: int = Field(default=587, description="SMTP port.")
    smtp_user: str | None = Field(default=None, description="SMTP login, if the server wants one.")
    smtp_password: str | None = Field(
        default=None, description="SMTP password, e.g. dg.EnvVar('FLOWSTONE_SMTP_PASSWORD')."
    )
    smtp_starttls: bool = Field(default=False, description="Upgrade with STARTTLS after connect.")
    smtp_ssl: bool = Field(default=False, description="Connect with implicit TLS (port 465).")
    smtp_from: str = Field(default="flowstone@localhost", description="Sender address.")
    smtp_to: list[str] = Field(default_factory=list, description="Recipient addresses.")
    log_always: bool = Field(
        default=False, description="Also log every notification when Slack or email is on."
    )
    dagster_ui_url: str = Field(
        default="http://127.0.0.1:3000", description="Base URL used for links to runs."
    )
    duplicate_window_minutes: float = Field(
        default=60.0,
        description="Repeats of the same failure inside this window are counted, not sent.",
    )
    retry_base_seconds: float = Field(default=30.0, description="First retry delay (doubles).")
    retry_max_seconds: float = Field(default=1800.0, description="Longest retry delay.")

    def outbox(self) -> Outbox:
        return Outbox(
            self.database_url,
            backoff=Backoff(self.retry_base_seconds, self.retry_max_seconds),
            duplicate_window=timedelta(minutes=self.duplicate_window_minutes),
        )

    def channels(self) -> dict[str, Channel]:
        channels: dict[str, Channel] = {}
        client = None
        if self.slack is not None:
            client = self.slack.get_client()
        elif self.slack_token:
            from slack_sdk import WebClient

            client = WebClient(token=self.slack_token, base_url=self.slack_base_url, timeout=10)
        if client is not None:
            channels["slack"] = SlackChannel(client, self.slack_channel)
        if self.smtp_host:
            channels["email"] = EmailChannel(
                host=self.smtp_host,
                port=self.smtp_port,
                sender=self.smtp_from,
                recipients=self.smtp_to,
                user=self.smtp_user,
                password=self.smtp_password,
                starttls=self.smtp_starttls,
                use_ssl=self.smtp_ssl,
            )
        if not channels or self.log_always:
            channels["log"] = LogChannel()
        return channels

    def notifier(self) -> Notifier:
        return Notifier(self.outbox(), self.channels())

    def notify(self, notification: Notification) -> list[int]:
        """Queue a notification (delivered by the next flush); returns outbox row ids."""
        return self.notifier().notify(notification)

    def run_url(self, run_id: str) -> str:
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{run_id}"


def notifications_resource_from_env(**overrides) -> NotificationsResource:
    """The resource as `.env` configures it; with nothing set, notifications go to the log.

    Secrets become ``dg.EnvVar`` (resolved at run time, never stored in the definitions) and
    only when set, because an ``EnvVar`` of a missing variable fails resource initialisation.
    Variables: SLACK_BOT_TOKEN, FLOWSTONE_SLACK_CHANNEL, FLOWSTONE_SMTP_HOST, FLOWSTONE_SMTP_PORT,
    FLOWSTONE_SMTP_USER, FLOWSTONE_SMTP_PASSWORD, FLOWSTONE_SMTP_FROM, FLOWSTONE_SMTP_TO
    (comma-separated), FLOWSTONE_SMTP_STARTTLS (1/0), FLOWSTONE_DAGSTER_UI_URL,
    FLOWSTONE_NOTIFICATIONS_DB_URL.
    """
    env = os.environ
    config: dict = {}
    if env.get("SLACK_BOT_TOKEN"):
        config["slack_token"] = dg.EnvVar("SLACK_BOT_TOKEN")
    if env.get("FLOWSTONE_SMTP_PASSWORD"):
        config["smtp_password"] = dg.EnvVar("FLOWSTONE_SMTP_PASSWORD")
    plain = {
        "FLOWSTONE_SLACK_CHANNEL": "slack_channel",
        "FLOWSTONE_SMTP_HOST": "smtp_host",
        "FLOWSTONE_SMTP_USER": "smtp_user",
        "FLOWSTONE_SMTP_FROM": "smtp_from",
        "FLOWSTONE_DAGSTER_UI_URL": "dagster_ui_url",
        "FLOWSTONE_NOTIFICATIONS_DB_URL": "database_url",
    }
    for name, field in plain.items():
        if env.get(name):
            config[field] = env[name]
    if env.get("FLOWSTONE_SMTP_PORT"):
        config["smtp_port"] = int(env["FLOWSTONE_SMTP_PORT"])
    if env.get("FLOWSTONE_SMTP_TO"):
        config["smtp_to"] = [a.strip() for a in env["FLOWSTONE_SMTP_TO"].split(",") if a.strip()]
    if env.get("FLOWSTONE_SMTP_STARTTLS"):
        config["smtp_starttls"] = env["FLOWSTONE_SMTP_STARTTLS"].lower() in ("1", "true", "yes")
    config.update(overrides)
    return NotificationsResource(**config)

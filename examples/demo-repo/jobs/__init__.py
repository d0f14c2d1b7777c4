"""Jobs of the demo data repository."""
from nautobot.core.celery import register_jobs

from .backup import BackupConfigs

register_jobs(BackupConfigs)

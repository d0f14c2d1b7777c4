from nautobot.apps.jobs import Job


class BackupConfigs(Job):
    class Meta:
        name = "Back up device configurations"
        description = "Pulls running configurations and stores them in the backup repository"

    def run(self):
        self.logger.info("Nothing to back up in the demo.")

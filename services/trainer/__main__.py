"""Start the trainer service from `CAI_TRAINER_*` settings.

    CAI_TRAINER_DATA_DIR=.cache/trainer CAI_TRAINER_MODEL_ROOTS=.cache/models \\
        python -m services.trainer
"""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from services.trainer.app import create_app
from services.trainer.core.config import TrainerSettings
from services.trainer.runner import Runner

logger = logging.getLogger("services.trainer")


class DrainingServer(uvicorn.Server):
    """Stops taking queued jobs as soon as the signal arrives, not after uvicorn has closed
    its connections: a job started in between would only be killed and lost."""

    def __init__(self, config: uvicorn.Config, runner: Runner) -> None:
        super().__init__(config)
        self.runner = runner

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.runner.drain()
        super().handle_exit(sig, frame)


def main() -> None:
    settings = TrainerSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logger.info(
        "trainer on %s, data in %s, model roots %s, auth %s",
        settings.base_url,
        settings.data_dir,
        [str(root) for root in settings.model_roots],
        "on" if settings.api_key else "off",
    )
    app = create_app(settings)
    # One process: the runner's workers and SQLite state belong to it (no --workers).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None)
    DrainingServer(config, app.state.trainer.runner).run()


if __name__ == "__main__":
    main()

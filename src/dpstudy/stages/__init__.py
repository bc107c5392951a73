"""One module per DVC stage. Each is a thin entry point: ``add_arguments(parser)`` declares the
paths dvc.yaml passes, ``run(args)`` reads its params section and calls library functions."""

from . import download, profile_dataloader

STAGES = {
    "download": download,
    "profile_dataloader": profile_dataloader,
}

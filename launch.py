"""Train TRPO: `python launch.py [key=value ...]`, or a sweep with `python launch.py -m key=a,b ...`."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from trpo.config import ConfigError, check_group_options, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # Imported here, not at the top: env worker processes re-import this file, and must not load torch.
    from trpo.runner import run_from_hydra

    return run_from_hydra(cfg)


if __name__ == "__main__":
    try:
        check_group_options(sys.argv[1:], Path(__file__).parent / "conf")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()

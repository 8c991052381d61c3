"""Train TRPO: `python launch.py [key=value ...]`, or a sweep with `python launch.py -m key=a,b ...`."""

import hydra
from omegaconf import DictConfig

from trpo.runner import run_from_hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_from_hydra(cfg)


if __name__ == "__main__":
    main()

"""config.shap is checked before anything is restored: a misspelt checkpoint name explained
the latest checkpoint instead of raising."""
import pytest

from jaxmm.saliency import shap_runner


def test_a_misspelt_shap_checkpoint_raises_before_restoring(smoke_config, tmp_path):
  config = smoke_config("synthetic_derm", "model=concat")
  with config.unlocked():
    config.shap = shap_runner.default_config()
  config.shap.checkpoint = "bset"
  with pytest.raises(ValueError, match=r"config.shap.checkpoint must be one of \['best', "
                                       r"'latest'\], got 'bset'. Did you mean 'best'\?"):
    shap_runner.run_shap(config, str(tmp_path))
  config.shap.checkpoint = "latest"
  assert shap_runner.shap_config(config).checkpoint == "latest"

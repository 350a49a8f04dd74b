"""`target_quality` on a quality route (issue 28): the router model's cross-validated curve
(stored by `farebox router train`) turns the share of the strong model's quality gain a
route asks for into the strong-call share that gets it; a model without a curve, a curve
that never gets there, or a second policy beside it is a config error naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config.loading import parse_config
from gateway.config.schema import GatewayConfig
from gateway.router.model_io import default_model, save_model
from gateway.runtime.yaml_loader import ConfigError
from gateway.state import quality_route_specs
from routing.quality_model import QualityModel

BASE = """
providers:
  sim: {kind: serverless, protocol: openai, api_base: "http://127.0.0.1:1/v1", api_key: k}
deployments:
  cheap@sim: {provider: sim, model: cheap}
  strong@sim: {provider: sim, model: strong}
routes:
"""


def _config(route: str) -> GatewayConfig:
    return parse_config(BASE + f"  r: {route}\n", "quality.yaml", {})


def test_the_shipped_model_holds_a_cross_validated_curve() -> None:
    model = default_model()
    shares = [share for share, _pgr in model.curve]
    assert shares[0] == 0 and shares[-1] == 1 and shares == sorted(shares)
    assert model.curve[0][1] == pytest.approx(0) and model.curve[-1][1] == pytest.approx(1)
    # Between points the share is interpolated; a point's own PGR gives its own share.
    share, pgr = model.curve[4]
    assert model.share_for_quality(pgr) == pytest.approx(share)
    lo, hi = model.curve[5], model.curve[6]
    middle = model.share_for_quality((lo[1] + hi[1]) / 2)
    assert middle == pytest.approx((lo[0] + hi[0]) / 2)
    assert model.share_for_quality(5.0) is None


def test_a_route_s_target_quality_becomes_its_strong_share() -> None:
    config = _config("{strategy: quality, targets: [cheap@sim, strong@sim], target_quality: 0.8}")
    spec = quality_route_specs(config)["r"]
    assert spec.strong_share == pytest.approx(default_model().share_for_quality(0.8))
    assert 0.3 < spec.strong_share < 0.9  # the shipped curve: 80 % of the gain at ~65 %


def test_the_curve_round_trips_through_the_model_file(tmp_path: Path) -> None:
    model = default_model()
    again = QualityModel.from_dict(model.as_dict())
    flat = [x for point in model.curve for x in point]
    assert [x for point in again.curve for x in point] == pytest.approx(flat, abs=1e-4)
    with pytest.raises(ValueError, match="pgr_curve"):
        QualityModel.from_dict({**model.as_dict(), "pgr_curve": [[0.5, 0.1], [0.2, 0.3]]})
    with pytest.raises(ValueError, match="pgr_curve"):
        QualityModel.from_dict({**model.as_dict(), "pgr_curve": [[0.5]]})


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (
            "{strategy: quality, targets: [cheap@sim, strong@sim], strong_share: 0.3, "
            "target_quality: 0.8}",
            "give one of threshold, strong_share or target_quality",
        ),
        ("{strategy: failover, targets: [cheap@sim], target_quality: 0.8}", "strategy quality"),
        ("{strategy: quality, targets: [cheap@sim, strong@sim], target_quality: 0}", "greater"),
        ("{strategy: quality, targets: [cheap@sim, strong@sim], target_quality: 1.5}", "less"),
    ],
)
def test_a_wrong_target_is_a_config_error(route: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(route)


def test_a_model_without_a_curve_or_short_of_the_target_is_refused(tmp_path: Path) -> None:
    bare = tmp_path / "bare.json"
    save_model(dataclasses.replace(default_model(), curve=()), bare)
    route = "{strategy: quality, targets: [cheap@sim, strong@sim], target_quality: 0.8, "
    with pytest.raises(ConfigError, match="no quality curve"):
        _config(route + f"router_model: {bare}}}")
    short = tmp_path / "short.json"
    save_model(dataclasses.replace(default_model(), curve=((0.0, 0.0), (1.0, 0.7))), short)
    with pytest.raises(ConfigError, match=r"never reaches 0\.8"):
        _config(route + f"router_model: {short}}}")

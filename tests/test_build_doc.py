"""docs/build.md's wiring table is the packaged calibration's, so the two cannot drift apart."""

from __future__ import annotations

from pathlib import Path

from calibration import TEMPLATE_CALIBRATION_PATH, Calibration, load_calibration

BUILD_GUIDE = Path(__file__).resolve().parents[1] / "docs" / "build.md"
#: What a positive angle about each torso axis does to the limb below the joint (right-handed).
POSITIVE_MOTION = {(0, 0, 1): "turns left", (0, 1, 0): "swings back", (1, 0, 0): "swings to the robot's left"}


def wiring_table(cal: Calibration) -> str:
    """The table as build.md must show it: channel, joint, positive angle, pulse direction, limits."""
    rows = ["| channel | joint | positive angle | a longer pulse turns it | limits (µs) |", "|---|---|---|---|---|"]
    for joint in sorted(cal.joints, key=lambda j: j.channel):
        way = "the positive way (+1)" if joint.direction > 0 else "the negative way (−1)"
        motion = POSITIVE_MOTION[tuple(round(a) for a in joint.axis)]
        rows.append(f"| {joint.channel} | `{joint.name}` | {motion} | {way} | {joint.min_us:.0f}..{joint.max_us:.0f} |")
    return "\n".join(rows)


def test_the_build_guide_wiring_table_is_the_packaged_calibration() -> None:
    table = wiring_table(load_calibration(TEMPLATE_CALIBRATION_PATH))
    assert table in BUILD_GUIDE.read_text(), f"docs/build.md's wiring table must read:\n{table}"


def test_the_readme_sends_a_builder_to_the_guide_first() -> None:
    readme = (BUILD_GUIDE.parents[1] / "README.md").read_text()
    real_robot = readme[readme.index("## On the real robot"):]
    assert real_robot.index("docs/build.md") < real_robot.index("```")

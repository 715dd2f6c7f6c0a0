//! `when`, `max_interval` and a camera's `motion` section.

use super::*;

fn with_task(task: &str) -> String {
    MINIMAL.replace(
        "  { task = \"<OD>\", every = \"500ms\" },",
        &format!("  {task},"),
    )
}

#[test]
fn a_gated_task_gets_a_heartbeat_and_the_camera_a_detector() {
    let text = with_task("{ task = \"<OD>\", every = \"500ms\", when = \"changed\" }").replace(
        "tasks = [",
        "motion = { threshold = 30, min_area = 0.02, masks = [[[0.0, 0.0], [0.5, 0.0], [0.5, 0.1]]] }\ntasks = [",
    );
    let config = compile(&text).unwrap();
    let camera = &config.cameras[0];
    assert_eq!(
        camera.tasks[0].when,
        crate::schedule::When::Changed {
            max_interval: compile::DEFAULT_MAX_INTERVAL
        }
    );
    assert_eq!(camera.tasks[1].when, crate::schedule::When::Always);
    assert_eq!(camera.motion.threshold, 30);
    assert_eq!(camera.motion.min_area, 0.02);
    assert_eq!(camera.motion.masks.len(), 1);
    // What validate --print shows compiles to the same configuration.
    let printed = config.effective_toml();
    assert!(printed.contains("when = \"changed\""), "{printed}");
    let again = compile(&printed).unwrap();
    assert_eq!(again.cameras[0].tasks, camera.tasks);
    assert_eq!(again.cameras[0].motion, camera.motion);
}

#[test]
fn gating_mistakes_name_the_key() {
    let cases = [
        (
            "{ task = \"<OD>\", every = \"500ms\", when = \"sometimes\" }",
            "cameras[0].tasks[0].when",
        ),
        (
            "{ task = \"<OD>\", every = \"500ms\", max_interval = \"1m\" }",
            "cameras[0].tasks[0].max_interval",
        ),
        (
            "{ task = \"<OD>\", every = \"10s\", when = \"changed\", max_interval = \"5s\" }",
            "cameras[0].tasks[0].max_interval",
        ),
    ];
    for (task, key) in cases {
        assert_eq!(keys(&with_task(task)), [key], "{task}");
    }
    let bad_masks = [
        "[[[0.0, 0.0], [0.5, 0.0]]]",
        "[[[0.0, 0.0], [1.5, 0.0], [0.5, 0.5]]]",
        "[[0.0, 0.0]]",
        "\"everywhere\"",
    ];
    for masks in bad_masks {
        let text = MINIMAL.replace(
            "tasks = [",
            &format!("motion = {{ masks = {masks} }}\ntasks = ["),
        );
        assert_eq!(keys(&text), ["cameras[0].motion.masks"], "{masks}");
    }
    let text = MINIMAL.replace("tasks = [", "motion = { threshold = 0 }\ntasks = [");
    assert_eq!(keys(&text), ["cameras[0].motion.threshold"]);
    let printed = lines(&MINIMAL.replace(
        "tasks = [",
        "motion = { masks = [[[0.0, 0.0], [0.5, 0.0]]] }\ntasks = [",
    ));
    assert!(printed[0].contains("at least 3 points"), "{printed:?}");
}

#[test]
fn privacy_masks_are_polygons_checked_and_printed() {
    let text = MINIMAL.replace(
        "tasks = [",
        "privacy_masks = [[[0.6, 0.0], [1.0, 0.0], [1.0, 0.4]], [[0.0, 0.9], [0.2, 0.9], [0.2, 1.0], [0.0, 1.0]]]\ntasks = [",
    );
    let config = compile(&text).unwrap();
    assert_eq!(config.cameras[0].privacy_masks.len(), 2);
    let again = compile(&config.effective_toml()).unwrap();
    assert_eq!(
        again.cameras[0].privacy_masks,
        config.cameras[0].privacy_masks
    );
    let bad = MINIMAL.replace(
        "tasks = [",
        "privacy_masks = [[[0.0, 0.0], [0.0, 0.5], [0.0, 1.0]]]\ntasks = [",
    );
    assert_eq!(keys(&bad), ["cameras[0].privacy_masks"]);
    assert!(lines(&bad)[0].contains("no area"), "{:?}", lines(&bad));
}

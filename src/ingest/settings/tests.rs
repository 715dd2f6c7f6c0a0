use super::*;

#[test]
fn credentials_leave_the_url_and_are_decoded() {
    let (url, creds) = split_credentials("rtsp://admin:p%40ss:w@10.0.0.2:554/stream1?x=1");
    assert_eq!(url, "rtsp://10.0.0.2:554/stream1?x=1");
    let creds = creds.expect("credentials");
    assert_eq!(creds.username, "admin");
    assert_eq!(creds.password.expose(), "p@ss:w");
}

#[cfg(feature = "gstreamer")]
#[test]
fn gstreamer_text_is_scrubbed_of_urls_and_the_password() {
    let text = "could not open rtsp://u:secret@cam:554/a (rtsp://cam/b)";
    let scrubbed = scrub(text, None);
    assert_eq!(
        scrubbed,
        "could not open rtsp://u:***@cam:554/a (rtsp://cam/b)"
    );
    let login = Login {
        username: "u".into(),
        password: Secret::new("hunter2"),
    };
    assert_eq!(scrub("pw=hunter2!", Some(&login)), "pw=***!");
    assert!(!format!("{login:?}").contains("hunter2"));
    let creds = Credentials::new("u", "hunter2");
    assert!(!format!("{creds:?}").contains("hunter2"));
}

#[test]
fn settings_debug_never_shows_the_password() {
    let s = CameraSettings::new("door", "rtsp://u:hunter2@cam/x");
    assert!(!format!("{s:?}").contains("hunter2"));
    let r = s.resolve().expect("valid");
    assert!(!format!("{r:?}").contains("hunter2"));
    assert_eq!(
        r.source,
        CameraSource::Rtsp {
            location: "rtsp://cam/x".into()
        }
    );
    assert_eq!(
        r.credentials.map(|c| c.password.expose().to_string()),
        Some("hunter2".into())
    );
}

#[test]
fn credentials_in_the_url_and_beside_it_are_refused() {
    let mut s = CameraSettings::new("door", "rtsp://a:b@cam/x");
    s.credentials = Some(Credentials::new("c", "d"));
    let e = s.check().expect_err("both");
    assert!(
        matches!(
            e,
            IngestError::InvalidSetting {
                setting: "username",
                ..
            }
        ),
        "{e}"
    );
    let mut s = CameraSettings::new("door", "rtsp://cam/x");
    s.credentials = Some(Credentials::new("c", "d"));
    let r = s.resolve().expect("valid");
    assert_eq!(r.credentials.map(|c| c.username), Some("c".into()));
}

#[test]
fn a_password_file_is_read_by_resolve_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = CameraSettings::new("door", "rtsp://cam/x");
    s.credentials = Some(Credentials {
        username: "viewer".into(),
        password: Some(PasswordSource::File(dir.path().join("missing"))),
    });
    assert!(s.check().is_ok(), "check reads no file");
    let e = s.resolve().expect_err("missing file");
    assert!(
        matches!(
            e,
            IngestError::InvalidSetting {
                setting: "password_file",
                ..
            }
        ),
        "{e}"
    );
    std::fs::write(dir.path().join("missing"), "s3cret\n").expect("write");
    let r = s.resolve().expect("readable");
    assert_eq!(
        r.credentials.map(|c| c.password.expose().to_string()),
        Some("s3cret".to_string())
    );
}

#[test]
fn urls_of_every_source_parse() {
    assert_eq!(
        CameraSource::parse("test://?pattern=snow&width=64&height=48&fps=5"),
        Ok(CameraSource::Test {
            pattern: "snow".into(),
            width: 64,
            height: 48,
            fps: 5
        })
    );
    assert_eq!(
        CameraSource::parse("v4l2:///dev/video2"),
        Ok(CameraSource::V4l2 {
            device: PathBuf::from("/dev/video2")
        })
    );
    assert_eq!(
        CameraSource::parse("csi://1?width=1280&height=720"),
        Ok(CameraSource::Csi {
            sensor_id: 1,
            width: 1280,
            height: 720,
            fps: 30
        })
    );
    assert!(matches!(
        CameraSource::parse("file:///tmp/a.mp4"),
        Ok(CameraSource::Uri { .. })
    ));
    assert!(CameraSource::parse("ftp://x/y").is_err());
    assert!(CameraSource::parse("test://?pattern=nope").is_err());
    assert!(CameraSource::parse("test://?width=0").is_err());
    assert!(CameraSource::parse("v4l2://video0").is_err());
    assert!(CameraSource::parse("rtsp:///x").is_err());
}

#[test]
fn source_urls_refuse_what_their_kind_cannot_take() {
    let refused = |url: &str, needle: &str| {
        let reason = CameraSource::parse(url).expect_err(url);
        assert!(reason.contains(needle), "{url}: {reason}");
    };
    refused(
        "test://?patern=ball",
        "unknown query key `patern`; allowed: pattern, width, height, fps",
    );
    refused("test://?fps=1000", "fps=1000; allowed: 1..=240");
    refused("test://?fps=0", "fps=0; allowed: 1..=240");
    refused("test://cam?pattern=ball", "no host or path");
    refused("csi://abc", "sensor id `abc` is not a number");
    refused(
        "csi://0?pattern=ball",
        "unknown query key `pattern`; allowed: width, height, fps",
    );
    refused("v4l2://host/dev/video0", "absolute /dev path");
    refused("file://", "no path");
    refused("not a url", "not a URL");
    // Percent-encoded query values are decoded, as any URL's are.
    assert!(matches!(
        CameraSource::parse("test://?pattern=%62all"),
        Ok(CameraSource::Test { ref pattern, .. }) if pattern == "ball"
    ));
    assert!(matches!(
        CameraSource::parse("csi://"),
        Ok(CameraSource::Csi { sensor_id: 0, .. })
    ));
}

#[test]
fn a_password_ending_in_an_escape_is_decoded_whole() {
    let (url, creds) = split_credentials("rtsp://viewer:pa%25@cam/x");
    assert_eq!(url, "rtsp://cam/x");
    assert_eq!(creds.expect("login").password.expose(), "pa%");
    let (url, creds) = split_credentials("rtsp://cam/x");
    assert_eq!((url.as_str(), creds.is_none()), ("rtsp://cam/x", true));
}

#[test]
fn bad_settings_are_errors_that_name_the_camera_and_the_setting() {
    let mut s = CameraSettings::new("yard", "test://");
    s.analysis_fps = Some(2000.0);
    let e = s.resolve().expect_err("every = 500us");
    let text = e.to_string();
    assert!(
        text.contains("yard") && text.contains("`tasks`") && text.contains("every >= 1ms"),
        "{text}"
    );

    let mut s = CameraSettings::new("yard", "test://");
    s.max_attempts = MaxAttempts::Limit(0);
    assert!(s.resolve().is_err());

    let s = CameraSettings::new("yard", "gopher://u:hunter2@x/");
    let text = s.resolve().expect_err("scheme").to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("yard"), "{text}");

    let mut s = CameraSettings::new("yard", "test://");
    s.credentials = Some(Credentials::new("a", "b"));
    assert!(s.resolve().is_err());
}

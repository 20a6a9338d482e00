//! Bad input changes nothing and says what is wrong: broken jobspecs name file, line and field;
//! malformed API bodies get a 400 with a message and the server keeps serving.

use std::time::Duration;

use flotilla_test_support::{Cluster, get_json};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

const GOOD: &str = r#"job "ok" {
  group "g" {
    network {
      port "http" {}
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "sleep"
        args    = ["1000"]
      }
    }
  }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_jobspecs_and_bodies_are_rejected_with_located_errors() {
    let mut c = Cluster::new(std::path::Path::new(BIN));
    c.start_server();
    flotilla_test_support::eventually("server up", Duration::from_secs(20), || {
        let url = format!("{}/v1/status/leader", c.api());
        async move { get_json(&url).await }
    })
    .await;
    let dir = c.dir.path().to_path_buf();

    let cases = [
        (
            "syntax.hcl",
            GOOD.replace("group \"g\" {", "group \"g\" {{"),
            vec!["syntax.hcl:2:"],
        ),
        (
            "driver.hcl",
            GOOD.replace("raw_exec", "dockr"),
            vec!["driver.hcl:7:", "driver", "dockr"],
        ),
        (
            "port.hcl",
            GOOD.replace(
                "    task \"t\" {",
                "    service {\n      name = \"svc\"\n      port = \"htp\"\n    }\n    task \"t\" {",
            ),
            vec!["port.hcl:8:", "port", "htp"],
        ),
    ];
    for (name, body, needles) in &cases {
        let path = write(&dir, name, body);
        let out = c.cli(&["job", "run", &path]);
        assert_ne!(
            out.code, 0,
            "{name}: job run should fail:\n{}{}",
            out.stdout, out.stderr
        );
        let all = format!("{}{}", out.stdout, out.stderr);
        for n in needles {
            assert!(all.contains(n), "{name}: expected {n:?} in:\n{all}");
        }
        let v = c.cli(&["job", "validate", &path]);
        assert_ne!(v.code, 0, "{name}: validate should fail");
    }
    let jobs = get_json(&format!("{}/v1/jobs", c.api())).await.unwrap();
    assert_eq!(
        jobs.as_array().unwrap().len(),
        0,
        "no job may be registered: {jobs}"
    );

    // Malformed API bodies: 400 with a message naming the problem.
    let http = reqwest::Client::new();
    let bodies: [(&str, &str); 4] = [
        ("{not json", "invalid JSON body"),
        ("", "empty"),
        (
            r#"{"Job": {"ID": "x", "TaskGroups": [{"Name": "g", "Count": "three"}]}}"#,
            "Count",
        ),
        (
            r#"{"Job": {"ID": "x", "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "nope"}]}]}}"#,
            "nope",
        ),
    ];
    for (body, needle) in bodies {
        let r = http
            .post(format!("{}/v1/jobs", c.api()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "body {body:?}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains(needle),
            "body {body:?}: expected {needle:?} in {text:?}"
        );
    }
    // Still serving, still nothing registered.
    let jobs = get_json(&format!("{}/v1/jobs", c.api())).await.unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 0);

    // A good one parses through the API (HCL → JSON) in Nomad's shape.
    let r = http
        .post(format!("{}/v1/jobs/parse", c.api()))
        .json(&serde_json::json!({"JobHCL": GOOD, "Canonicalize": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let job: serde_json::Value = r.json().await.unwrap();
    assert_eq!(job["ID"], "ok");
    assert_eq!(job["TaskGroups"][0]["Tasks"][0]["Driver"], "raw_exec");
    assert!(c.server.as_mut().map(|s| !s.exited()).unwrap_or(false));
}

//! The platform operations of `safeguard recover` against local HTTP servers implementing the Cloud
//! Controller v2 + UAA endpoints and the Docker Engine API endpoints safeguard uses (over TCP and over a
//! unix socket), including their error answers. Cloud Foundry and a Docker engine cannot run on this
//! machine, so these servers (tests/recover_support/fake_http.rs) stand in for them. Command templates
//! run real local commands.

use crate::recover_support::fake_http;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_http::{cloud_controller, docker_handler, CcState, DockerState, Server};
use safeguard::platform::cloud_controller::{CloudController, CloudControllerConfig};
use safeguard::platform::command::CommandsConfig;
use safeguard::platform::docker::{Docker, DockerConfig};
use safeguard::platform::{from_config, ContainerRef, CreateRequest, Op, OpContext, PlatformConfig, PlatformError, PlatformKind};

const SPACE: &str = "space-2222";

fn cc_config(url: &str) -> CloudControllerConfig {
    CloudControllerConfig {
        api_url: url.into(),
        client_id: Some("safeguard".into()),
        client_secret: Some("uaa-client-secret-Pw7".into()),
        poll_interval: Duration::from_millis(20),
        create_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        ..CloudControllerConfig::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn cloud_controller_creates_waits_finds_and_binds() {
    let state = Arc::new(Mutex::new(CcState::new(SPACE)));
    state.lock().unwrap().apps.insert("orders".into(), "app-guid-1".into());
    let server = cloud_controller(state.clone());
    let cc = CloudController::new(&cc_config(&server.url)).unwrap();
    rt().block_on(async {
        let c = cc.create(&CreateRequest { name: "orders-db".into(), space_guid: SPACE.into() }).await.unwrap();
        assert_eq!(c.instance_id, "5d1e0c4a-7e1b-4c53-9a1f-0b7c6a2d9e01");
        assert!(c.detail.contains("succeeded"), "{}", c.detail);
        assert_eq!(cc.find_instance("orders-db", SPACE).await.unwrap().as_deref(), Some(c.instance_id.as_str()));
        assert_eq!(cc.find_instance("nope", SPACE).await.unwrap(), None);
        // Creating the same name again: the Cloud Controller's CF-ServiceInstanceNameTaken.
        let e = cc.create(&CreateRequest { name: "orders-db".into(), space_guid: SPACE.into() }).await.unwrap_err();
        assert!(matches!(e, PlatformError::NameTaken { .. }), "{e}");
        assert!(e.to_string().contains("--into"), "{e}");

        let b = cc.bind(&c.instance_id, Some(SPACE), "orders").await.unwrap();
        assert!(b.contains("binding-1"), "{b}");
        // Binding again is idempotent (CF-ServiceBindingAppServiceTaken).
        let b = cc.bind(&c.instance_id, Some(SPACE), "orders").await.unwrap();
        assert!(b.contains("already bound"), "{b}");
        let e = cc.bind(&c.instance_id, Some(SPACE), "billing").await.unwrap_err();
        assert!(e.to_string().contains("no app named \"billing\" in space space-2222"), "{e}");
        let e = cc.bind(&c.instance_id, None, "orders").await.unwrap_err();
        assert!(e.to_string().contains("--space-guid"), "{e}");
    });
    let reqs = server.requests();
    let token = reqs.iter().filter(|r| r.path == "/uaa/oauth/token").collect::<Vec<_>>();
    assert_eq!(token.len(), 1, "the token is fetched once and reused");
    assert!(token[0].body.contains("grant_type=client_credentials"));
    let create = reqs.iter().find(|r| r.method == "POST" && r.path.starts_with("/v2/service_instances")).unwrap();
    assert_eq!(create.path, "/v2/service_instances?accepts_incomplete=true");
    assert_eq!(create.json()["service_plan_guid"], "cc-plan-guid-solo");
    assert_eq!(create.json()["name"], "orders-db");
    assert!(reqs.iter().any(|r| r.path == "/v2/service_plans?q=unique_id%3Ab96d0936-e423-11e5-accb-93d374e93368"));
    // It polled the last operation until it succeeded.
    assert!(reqs.iter().filter(|r| r.path.starts_with("/v2/service_instances/5d1e")).count() >= 2);
    let bind = reqs.iter().find(|r| r.path == "/v2/service_bindings").unwrap();
    assert_eq!(bind.json()["app_guid"], "app-guid-1");
}

#[test]
fn cloud_controller_error_answers_are_explained_without_secrets() {
    let state = Arc::new(Mutex::new(CcState::new(SPACE)));
    let server = cloud_controller(state.clone());
    rt().block_on(async {
        // Wrong client secret: UAA's 401.
        let mut cfg = cc_config(&server.url);
        cfg.client_secret = Some("wrong-secret-Zz9".into());
        let e = CloudController::new(&cfg).unwrap().create(&CreateRequest { name: "x".into(), space_guid: SPACE.into() }).await.unwrap_err();
        let m = e.to_string();
        assert!(m.contains("UAA") && m.contains("HTTP 401") && m.contains("Bad credentials") && m.contains("credentials"), "{m}");
        assert!(!m.contains("wrong-secret-Zz9"), "{m}");

        // User credentials through the cf client (password grant).
        let mut cfg = cc_config(&server.url);
        cfg.client_id = None;
        cfg.client_secret = None;
        cfg.username = Some("admin".into());
        cfg.password = Some("user-pass-Qq1".into());
        let cc = CloudController::new(&cfg).unwrap();
        assert_eq!(cc.find_instance("none", SPACE).await.unwrap(), None);

        // A 500 from the Cloud Controller.
        state.lock().unwrap().fail_create = true;
        let e = cc.create(&CreateRequest { name: "y".into(), space_guid: SPACE.into() }).await.unwrap_err();
        let m = e.to_string();
        assert!(m.contains("HTTP 500") && m.contains("(UnknownError)") && m.contains("POST") && m.contains("/v2/service_instances"), "{m}");
        assert!(!m.contains("user-pass-Qq1"), "{m}");

        // A plan the Cloud Controller does not know.
        state.lock().unwrap().fail_create = false;
        let mut cfg = cc_config(&server.url);
        cfg.plan_unique_id = "no-such-plan".into();
        let e = CloudController::new(&cfg).unwrap().create(&CreateRequest { name: "z".into(), space_guid: SPACE.into() }).await.unwrap_err();
        assert!(e.to_string().contains("no service plan with unique id no-such-plan"), "{e}");

        // Nothing listening.
        let e = CloudController::new(&cc_config("http://127.0.0.1:9")).unwrap().find_instance("a", SPACE).await.unwrap_err();
        assert!(e.to_string().contains("could not be reached"), "{e}");
    });
    let password_grant = server.requests().into_iter().find(|r| r.path == "/uaa/oauth/token" && r.body.contains("grant_type=password")).unwrap();
    assert!(password_grant.body.contains("username=admin"));
}

fn container(name: &str) -> ContainerRef {
    ContainerRef { instance_id: "i-1".into(), container: name.into(), host: Some("cell-b".into()) }
}

async fn docker_cycle(docker: &Docker, state: &Arc<Mutex<DockerState>>) {
    let c = container("cf-target");
    // Flushing a running container is refused.
    let e = docker.flush(&c).await.unwrap_err();
    assert!(e.to_string().contains("the container is running"), "{e}");
    assert!(docker.stop(&c).await.unwrap().contains("stopped cf-target"));
    assert!(docker.stop(&c).await.unwrap().contains("already stopped"), "stop is idempotent");
    let f = docker.flush(&c).await.unwrap();
    assert!(f.contains("emptied /data of cf-target"), "{f}");
    assert_eq!(state.lock().unwrap().flushed, vec!["cf-target".to_string()]);
    assert!(state.lock().unwrap().helpers.is_empty(), "the helper container was not removed");
    assert!(docker.start(&c).await.unwrap().contains("started cf-target"));
    assert!(docker.start(&c).await.unwrap().contains("already running"), "start is idempotent");

    // Errors: unknown container, failing helper.
    let e = docker.stop(&container("cf-gone")).await.unwrap_err();
    let m = e.to_string();
    assert!(m.contains("HTTP 404") && m.contains("No such container: cf-gone") && m.contains("another cell"), "{m}");
    docker.stop(&c).await.unwrap();
    state.lock().unwrap().helper_exit = 1;
    let e = docker.flush(&c).await.unwrap_err();
    assert!(e.to_string().contains("exited with status Some(1)"), "{e}");
    state.lock().unwrap().helper_exit = 0;
    // A helper left behind by an interrupted run is removed first.
    state.lock().unwrap().helpers.insert("safeguard-flush-cf-target".into(), "cf-target".into());
    docker.flush(&c).await.unwrap();
}

#[test]
fn docker_engine_api_over_tcp() {
    let state = Arc::new(Mutex::new(DockerState::new(&["cf-target"])));
    let server = Server::tcp(docker_handler(state.clone()));
    let docker =
        Docker::new(&DockerConfig { url: server.url.replace("http://", "tcp://"), timeout: Duration::from_secs(5), ..DockerConfig::default() }).unwrap();
    rt().block_on(docker_cycle(&docker, &state));
    let reqs = server.requests();
    let create = reqs.iter().find(|r| r.path.starts_with("/containers/create")).unwrap();
    assert_eq!(create.path, "/containers/create?name=safeguard-flush-cf-target");
    let b = create.json();
    assert_eq!(b["HostConfig"]["VolumesFrom"][0], "cf-target");
    assert_eq!(b["Image"], "dingotiles/dingo-postgresql:0.9");
    assert_eq!(b["Cmd"][0], "find '/data' -mindepth 1 -delete");
    assert!(reqs.iter().any(|r| r.path == "/containers/cf-target/stop?t=30"));
}

#[test]
fn docker_engine_api_over_a_unix_socket_with_a_cell_url_template() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let state = Arc::new(Mutex::new(DockerState::new(&["cf-target"])));
    let server = Server::unix(&sock, docker_handler(state.clone()));
    let docker = Docker::new(&DockerConfig { url: server.url.clone(), timeout: Duration::from_secs(5), ..DockerConfig::default() }).unwrap();
    rt().block_on(docker_cycle(&docker, &state));
    assert!(server.requests().len() > 10);
    // A per-cell TCP URL needs the cell.
    let docker = Docker::new(&DockerConfig { url: "tcp://{host}:1".into(), ..DockerConfig::default() }).unwrap();
    let e = rt().block_on(docker.stop(&ContainerRef { instance_id: "i".into(), container: "c".into(), host: None })).unwrap_err();
    assert!(e.to_string().contains("needs {host}"), "{e}");
    assert!(docker
        .describe(Op::Stop, &OpContext { container: Some("cf-x"), host: Some("cell-9"), ..OpContext::default() })
        .contains("tcp://cell-9:1: POST /containers/cf-x/stop"));
}

#[test]
fn api_platform_routes_create_and_bind_to_the_cloud_controller_and_containers_to_docker() {
    let cc_state = Arc::new(Mutex::new(CcState::new(SPACE)));
    cc_state.lock().unwrap().apps.insert("orders".into(), "app-guid-1".into());
    let cc = cloud_controller(cc_state);
    let d_state = Arc::new(Mutex::new(DockerState::new(&["cf-target"])));
    let d = Server::tcp(docker_handler(d_state));
    let cfg = PlatformConfig { kind: PlatformKind::Api, docker: DockerConfig { url: d.url.clone(), ..DockerConfig::default() }, ..PlatformConfig::default() };
    let p = from_config(&cfg, Some(&cc_config(&cc.url))).unwrap();
    assert_eq!(p.kind(), "api");
    rt().block_on(async {
        let created = p.create(&CreateRequest { name: "n".into(), space_guid: SPACE.into() }).await.unwrap();
        p.stop(&container("cf-target")).await.unwrap();
        p.bind(&created.instance_id, Some(SPACE), "orders").await.unwrap();
    });
    assert!(cc.paths().iter().any(|p| p == "POST /v2/service_bindings"));
    assert!(d.paths().iter().any(|p| p == "POST /containers/cf-target/stop?t=30"));
    // Without [cloud_controller], create says what to configure.
    let p = from_config(&cfg, None).unwrap();
    let e = rt().block_on(p.create(&CreateRequest { name: "n".into(), space_guid: SPACE.into() })).unwrap_err();
    assert!(e.to_string().contains("[cloud_controller]") && e.to_string().contains("--into"), "{e}");
}

#[test]
fn command_templates_run_real_commands_with_quoted_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let cfg = PlatformConfig {
        deployment: "dep loy".into(),
        commands: CommandsConfig {
            stop: format!("touch '{d}'/stopped-{{container}} && printf '%s\\n' {{deployment}} {{host}} > '{d}/args'"),
            flush: format!("rm -f '{d}'/data-{{container}}"),
            start: format!("rm -f '{d}'/stopped-{{container}}"),
            create: Some("echo creating {name} in {space_guid}; echo 0AB1C2D3-0000-4000-8000-00000000000F".into()),
            bind: Some(format!("echo {{app}} {{instance_id}} >> '{d}/binds'")),
            timeout: Duration::from_secs(5),
        },
        ..PlatformConfig::default()
    };
    let p = from_config(&cfg, None).unwrap();
    let c = ContainerRef { instance_id: "i-1".into(), container: "cf-abc".into(), host: Some("cell_z1/0".into()) };
    std::fs::write(dir.path().join("data-cf-abc"), "x").unwrap();
    rt().block_on(async {
        p.stop(&c).await.unwrap();
        assert!(dir.path().join("stopped-cf-abc").exists());
        // Values are single words even with spaces.
        assert_eq!(std::fs::read_to_string(dir.path().join("args")).unwrap(), "dep loy\ncell_z1/0\n");
        p.flush(&c).await.unwrap();
        assert!(!dir.path().join("data-cf-abc").exists());
        p.start(&c).await.unwrap();
        assert!(!dir.path().join("stopped-cf-abc").exists());
        let created = p.create(&CreateRequest { name: "orders db".into(), space_guid: SPACE.into() }).await.unwrap();
        assert_eq!(created.instance_id, "0ab1c2d3-0000-4000-8000-00000000000f");
        p.bind("i-1", Some(SPACE), "orders").await.unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("binds")).unwrap(), "orders i-1\n");
        // A value that could become shell syntax is refused before anything runs.
        let evil = ContainerRef { instance_id: "i".into(), container: "cf-x; touch pwned".into(), host: Some("h".into()) };
        let e = p.stop(&evil).await.unwrap_err();
        assert!(e.to_string().contains("not allowed"), "{e}");
        // A failing command: what failed, its output, what to do.
        let bad = PlatformConfig { commands: CommandsConfig { stop: "echo no route to director >&2; exit 7".into(), ..cfg.commands.clone() }, ..cfg.clone() };
        let e = from_config(&bad, None).unwrap().stop(&c).await.unwrap_err().to_string();
        assert!(e.contains("exited with status 7") && e.contains("no route to director") && e.contains("--resume"), "{e}");
    });
    assert!(!dir.path().join("pwned").exists());
    // Template typos are caught when the platform is built.
    let typo = PlatformConfig { commands: CommandsConfig { stop: "docker stop {contianer}".into(), ..CommandsConfig::default() }, ..PlatformConfig::default() };
    let e = from_config(&typo, None).err().unwrap().to_string();
    assert!(e.contains("platform.commands.stop") && e.contains("{contianer}"), "{e}");
}

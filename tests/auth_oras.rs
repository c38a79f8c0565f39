//! The oras Python client (oras-py) with credentials over TLS, verifying
//! the server with the test CA: alice pushes an artifact, bob (pull only)
//! pulls it back and cannot push, a wrong password gets nothing. Under
//! `scheme = "basic"` with oras-py's basic backend; under `scheme =
//! "token"` with its basic backend (ferro takes Basic on the API in token
//! mode too) and with its token backend for pulls. oras-py's token backend
//! cannot push to a token registry that answers a token lacking a scope
//! with 401 `insufficient_scope`, as distribution and ferro do: it retries
//! with the same token and only fetches a new one after a 403 (its push
//! begins with a HEAD, whose challenge asks for pull only). Skipped
//! without oras-py unless FERRO_REQUIRE_INTEROP=1.
mod auth_support;

use std::process::Command;

use auth_support::*;

const SCRIPT: &str = r#"
import os, sys, tempfile
import oras.provider

host, ca, backend, scheme = sys.argv[1:5]

def registry(user, password, backend=backend):
    r = oras.provider.Registry(hostname=host, insecure=False, tls_verify=ca, auth_backend=backend)
    r.auth.set_basic_auth(user, password)
    return r

work = tempfile.mkdtemp()
os.chdir(work)
with open("note.txt", "w") as f:
    f.write("hello from oras")
target = f"{host}/notes/readme:v1"
pushed = registry("alice", "a-pass").push(files=["note.txt"], target=target)
assert pushed.status_code == 201, (pushed.status_code, pushed.text)

for pull_backend in (backend, "token") if scheme == "token" else (backend,):
    out = tempfile.mkdtemp()
    files = registry("bob", "b-pass", pull_backend).pull(target=target, outdir=out)
    assert len(files) == 1, files
    with open(files[0]) as f:
        assert f.read() == "hello from oras"

try:
    denied = registry("bob", "b-pass").push(files=["note.txt"], target=f"{host}/notes/readme:v2")
    refused = denied.status_code >= 400
except Exception:
    refused = True
assert refused, "bob must not push"

try:
    wrong = registry("alice", "wrong").pull(target=target, outdir=tempfile.mkdtemp())
    refused = not wrong
except Exception:
    refused = True
assert refused, "a wrong password must not pull"
print("ok")
"#;

fn run(scheme: &str) {
    if !available("python3", &["-c", "import oras.provider"]) {
        return skip_or_fail("the oras Python package");
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        auth_support::htpasswd(&[("alice", "a-pass"), ("bob", "b-pass")]),
    )
    .unwrap();
    let config = dir.path().join("ferro.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[auth]\nscheme = \"{scheme}\"\nhtpasswd = \"{}\"\n\n\
             [[auth.rules]]\nusers = [\"alice\"]\nrepositories = [\"**\"]\nactions = [\"*\"]\n\n\
             [[auth.rules]]\nusers = [\"bob\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
            cert.display(),
            key.display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let server = Ferro::start(&dir.path().join("data"), Some(&config), &[], &[]);
    let out = Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            &server.addr,
            ca.to_str().unwrap(),
            "basic",
            scheme,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras-py with {scheme} auth failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oras_against_token_auth_over_tls() {
    run("token");
}

#[test]
fn oras_with_basic_over_tls() {
    run("basic");
}

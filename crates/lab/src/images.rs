//! Stand-in images for the seed scenarios, built from this host's Debian binaries and the
//! crate's own `dari-applet`, without a registry. **They are lab stand-ins**: a real cluster
//! pulls the real images. Each carries the label `io.dari.lab.stand-in=true` and a
//! description of what it really is.
//!
//! | name (as the seeds write it) | what is inside |
//! |---|---|
//! | `busybox` | busybox-static with its applets |
//! | `nginx` | Debian's nginx + libs (ldd), a config serving "Welcome to nginx!" on :80, busybox, curl |
//! | `traefik/whoami` | `dari-applet` as `/whoami` (+ libs): Hostname, IP lines, RemoteAddr, the request, on :80 |
//! | `jmalloc/echo-server` | `dari-applet` as `/bin/echo-server`: "Request served by <hostname>" + the request, on :8080 |
//! | `nicolaka/netshoot` | busybox + curl + iproute2 (ip, ss) + dig/nslookup + tcpdump + conntrack, with libs |
//! | `ubuntu:20.04` | **busybox-based** (not Ubuntu): busybox + curl, `/etc/os-release` says so |
//! | `registry.k8s.io/pause:3.10` (the agent builds its own `dari.local/pause`) | `dari-applet pause` |
//!
//! [`catalog`] is the pure description (which host files, which generated files);
//! [`build_images`] reads the host files, resolves libraries with `ldd`, writes one
//! `NAME.tar` per image and returns the paths; the lab imports them with `dari_agent::import_image`
//! (containerd's content and images API).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};
use crate::oci::{archive, ImageConfig, Layer};

/// The busybox-static binary (Debian package busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";
/// The standard PATH of the images.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host binary to copy, with the libraries `ldd` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBin {
    /// Candidate host paths, first existing wins (Debian moves things between /bin and /usr/bin).
    pub from: Vec<String>,
    /// Where it goes in the image.
    pub to: String,
    /// Extra names (symlinks to `to`).
    pub aliases: Vec<String>,
}

/// Where the applet binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// The `dari-applet` binary (see [`find_applet`]).
    pub applet: PathBuf,
    /// The busybox-static binary.
    pub busybox: PathBuf,
}

/// One image to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDef {
    /// Short name for file names and progress (`nginx`, `netshoot` ...).
    pub key: String,
    /// Full references it is imported under.
    pub names: Vec<String>,
    /// Include busybox and its applet links.
    pub busybox: bool,
    /// Include the applet binary at `/usr/local/bin/dari-applet` with these symlinks.
    pub applet_links: Vec<String>,
    /// Host binaries.
    pub bins: Vec<HostBin>,
    /// Generated files: path → (mode, content).
    pub files: BTreeMap<String, (u32, String)>,
    /// Empty directories: path → mode.
    pub dirs: BTreeMap<String, u32>,
    /// Config.
    pub config: ImageConfig,
}

/// `nginx` → `docker.io/library/nginx:latest`, `traefik/whoami` → `docker.io/traefik/whoami:latest`
/// (what the CRI looks images up by).
pub fn normalize(reference: &str) -> String {
    let (repo, tag) = match reference.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
        _ => (reference.to_string(), "latest".to_string()),
    };
    let first = repo.split('/').next().unwrap_or_default();
    let has_domain = repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_domain {
        repo
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{full}:{tag}")
}

fn hb(from: &[&str], to: &str, aliases: &[&str]) -> HostBin {
    HostBin {
        from: from.iter().map(|s| s.to_string()).collect(),
        to: to.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
    }
}

fn curl() -> HostBin {
    hb(&["/usr/bin/curl"], "/usr/bin/curl", &[])
}





const WELCOME: &str = include_str!("../../../images/nginx/index.html");
const NGINX_CONF: &str = include_str!("../../../images/nginx/nginx.conf");
const NGINX_DEFAULT: &str = include_str!("../../../images/nginx/default.conf");
const MIME_TYPES: &str = include_str!("../../../images/nginx/mime.types");

fn base_files(desc: &str) -> BTreeMap<String, (u32, String)> {
    let mut f = BTreeMap::new();
    f.insert(
        "/etc/passwd".into(),
        (0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nwww-data:x:33:33:www-data:/var/www:/bin/false\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n".into()),
    );
    f.insert("/etc/group".into(), (0o644, "root:x:0:\nnogroup:x:65534:\nwww-data:x:33:\nnginx:x:101:\n".into()));
    f.insert("/etc/nsswitch.conf".into(), (0o644, "passwd: files\ngroup: files\nhosts: files dns\n".into()));
    f.insert("/etc/dari-lab-stand-in".into(), (0o644, format!("{desc}\nA real cluster pulls the real image.\n")));
    f
}

fn base_dirs() -> BTreeMap<String, u32> {
    let mut d = BTreeMap::new();
    for p in ["/tmp", "/var/tmp"] {
        d.insert(p.to_string(), 0o1777);
    }
    for p in ["/root", "/proc", "/sys", "/dev", "/run", "/etc", "/var/run"] {
        d.insert(p.to_string(), 0o755);
    }
    d
}

fn cfg(entrypoint: &[&str], cmd: &[&str], env: &[&str], ports: &[u16], desc: &str) -> ImageConfig {
    let mut e = vec![PATH_ENV.to_string()];
    e.extend(env.iter().map(|s| s.to_string()));
    let mut labels = BTreeMap::new();
    labels.insert("io.dari.lab.stand-in".to_string(), "true".to_string());
    labels.insert("org.opencontainers.image.description".to_string(), desc.to_string());
    ImageConfig {
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: e,
        ports: ports.to_vec(),
        labels,
        workdir: "/".into(),
    }
}

/// The images the lab builds (pure).
pub fn catalog() -> Vec<ImageDef> {
    let mut v = Vec::new();
    let def = |key: &str, names: &[&str], busybox: bool, desc: &str, config: ImageConfig| ImageDef {
        key: key.into(),
        names: names.iter().map(|n| normalize(n)).collect(),
        busybox,
        applet_links: vec![],
        bins: vec![],
        files: base_files(desc),
        dirs: base_dirs(),
        config,
    };

    let d = "dari lab stand-in for busybox: Debian's busybox-static";
    v.push(def("busybox", &["busybox", "busybox:1.36"], true, d, cfg(&[], &["sh"], &[], &[], d)));

    let d = "dari lab stand-in for nginx: Debian's nginx serving the welcome page on :80, plus busybox and curl";
    let mut nginx = def("nginx", &["nginx"], true, d, cfg(&[], &["nginx", "-g", "daemon off;"], &[], &[80], d));
    nginx.bins = vec![hb(&["/usr/sbin/nginx"], "/usr/sbin/nginx", &[]), curl()];
    nginx.files.insert("/etc/nginx/nginx.conf".into(), (0o644, NGINX_CONF.into()));
    nginx.files.insert("/etc/nginx/conf.d/default.conf".into(), (0o644, NGINX_DEFAULT.into()));
    nginx.files.insert("/etc/nginx/mime.types".into(), (0o644, MIME_TYPES.into()));
    nginx.files.insert("/usr/share/nginx/html/index.html".into(), (0o644, WELCOME.into()));
    for p in ["/var/lib/nginx", "/var/log/nginx", "/var/cache/nginx", "/usr/lib/nginx/modules"] {
        nginx.dirs.insert(p.into(), 0o755);
    }
    v.push(nginx);

    let d = "dari lab stand-in for traefik/whoami: dari-applet whoami on :80";
    let mut whoami = def("whoami", &["traefik/whoami"], false, d, cfg(&["/whoami"], &[], &[], &[80], d));
    whoami.applet_links = vec!["/whoami".into()];
    v.push(whoami);

    let d = "dari lab stand-in for jmalloc/echo-server: dari-applet echo-server on :8080";
    let mut echo = def("echo-server", &["jmalloc/echo-server"], false, d, cfg(&["/bin/echo-server"], &[], &["PORT=8080"], &[8080], d));
    echo.applet_links = vec!["/bin/echo-server".into()];
    v.push(echo);

    let d = "dari lab stand-in for nicolaka/netshoot: busybox, curl, iproute2, dig/nslookup, tcpdump, conntrack";
    let mut ns = def("netshoot", &["nicolaka/netshoot"], true, d, cfg(&[], &["sh"], &[], &[], d));
    ns.bins = vec![
        curl(),
        hb(&["/usr/bin/ip", "/bin/ip", "/usr/sbin/ip", "/sbin/ip"], "/usr/sbin/ip", &["/sbin/ip", "/bin/ip"]),
        hb(&["/usr/bin/ss", "/bin/ss"], "/usr/bin/ss", &[]),
        hb(&["/usr/bin/dig"], "/usr/bin/dig", &[]),
        hb(&["/usr/bin/nslookup"], "/usr/bin/nslookup", &[]),
        hb(&["/usr/bin/tcpdump", "/usr/sbin/tcpdump"], "/usr/bin/tcpdump", &["/usr/sbin/tcpdump"]),
        hb(&["/usr/sbin/conntrack", "/sbin/conntrack"], "/usr/sbin/conntrack", &[]),
    ];
    v.push(ns);

    let d = "dari lab stand-in for ubuntu:20.04: NOT Ubuntu, a busybox userland with curl";
    let mut ub = def("ubuntu", &["ubuntu:20.04"], true, d, cfg(&[], &["bash"], &[], &[], d));
    ub.bins = vec![curl()];
    ub.files.insert(
        "/etc/os-release".into(),
        (0o644, "NAME=\"dari lab stand-in (busybox)\"\nID=dari-lab-stand-in\nPRETTY_NAME=\"dari lab stand-in for ubuntu:20.04 (busybox userland, not Ubuntu)\"\nVERSION_ID=\"20.04\"\n".into()),
    );
    ub.files.insert("/bin/bash".into(), (0o755, "#!/bin/sh\n# dari lab stand-in: busybox sh, not GNU bash\nexec /bin/sh \"$@\"\n".into()));
    v.push(ub);

    let d = "dari lab stand-in for pause: dari-applet pause";
    let mut pause = def("pause", &["registry.k8s.io/pause:3.10"], false, d, cfg(&["/pause"], &[], &[], &[], d));
    pause.applet_links = vec!["/pause".into()];
    pause.files.clear();
    v.push(pause);
    v
}

/// Finds `dari-applet`: `$DARI_APPLET`, then next to the running binary, then its parent
/// directory (test binaries live in `target/debug/deps`).
pub fn find_applet() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DARI_APPLET") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("dari-applet"), dir.parent()?.join("dari-applet")].into_iter().find(|p| p.is_file())
}

/// Default inputs: [`find_applet`] and [`BUSYBOX`].
pub fn default_inputs() -> Result<Inputs> {
    let applet = find_applet().ok_or_else(|| LabError::Image {
        image: "whoami/echo-server/pause".into(),
        reason: "dari-applet not found next to the dari binary (build it: cargo build -p dari-lab --bin dari-applet, or set DARI_APPLET)".into(),
    })?;
    Ok(Inputs { applet, busybox: PathBuf::from(BUSYBOX) })
}

/// Parses `ldd` output into the library paths to copy (the loader included).
pub fn parse_ldd(out: &str) -> Vec<String> {
    let mut v = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        let path = if let Some((_, rhs)) = line.split_once("=>") {
            rhs.split_whitespace().next().unwrap_or_default()
        } else {
            line.split_whitespace().next().unwrap_or_default()
        };
        if path.starts_with('/') && !v.iter().any(|p| p == path) {
            v.push(path.to_string());
        }
    }
    v
}

fn read(image: &str, p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| LabError::Image { image: image.into(), reason: format!("read {}: {e}", p.display()) })
}

/// The applet binary without symbols (a debug build is ~25 MB, stripped well under 1 MB):
/// `strip --strip-all -o TMP BIN` when binutils' strip exists, else the file as is.
fn stripped(image: &str, bin: &Path) -> Result<Vec<u8>> {
    let tmp = std::env::temp_dir().join(format!("dari-applet-strip-{}", std::process::id()));
    let ok = Command::new("strip").arg("--strip-all").arg("-o").arg(&tmp).arg(bin).status().map(|s| s.success()).unwrap_or(false);
    let data = if ok { read(image, &tmp) } else { read(image, bin) };
    let _ = std::fs::remove_file(&tmp);
    data
}

/// Copies `bin` and its libraries into `layer` at `to`.
fn add_dynamic(layer: &mut Layer, image: &str, bin: &Path, to: &str) -> Result<()> {
    let data = if to == "/usr/local/bin/dari-applet" { stripped(image, bin)? } else { read(image, bin)? };
    layer.file(to, 0o755, data);
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| LabError::Image { image: image.into(), reason: format!("run ldd {}: {e}", bin.display()) })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") {
            return Ok(());
        }
        return Err(LabError::Image { image: image.into(), reason: format!("ldd {} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr)) });
    }
    if text.contains("not found") {
        return Err(LabError::Image { image: image.into(), reason: format!("ldd {}: missing libraries:\n{text}", bin.display()) });
    }
    for lib in parse_ldd(&text) {
        if !layer.has(&lib) {
            layer.file(&lib, 0o755, read(image, Path::new(&lib))?);
        }
    }
    Ok(())
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| LabError::Image { image: "busybox".into(), reason: format!("run {} --list-full: {e}", busybox.display()) })?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// The root file system of one image, read from the host.
pub fn rootfs(def: &ImageDef, inputs: &Inputs) -> Result<Layer> {
    let mut l = Layer::default();
    for (p, mode) in &def.dirs {
        l.dir(p, *mode);
    }
    for (p, (mode, text)) in &def.files {
        l.file(p, *mode, text.clone().into_bytes());
    }
    for b in &def.bins {
        let src = b.from.iter().map(PathBuf::from).find(|p| p.is_file()).ok_or_else(|| LabError::Image {
            image: def.key.clone(),
            reason: format!("none of {:?} exists (apt packages: see the dari-lab README)", b.from),
        })?;
        add_dynamic(&mut l, &def.key, &src, &b.to)?;
        for a in &b.aliases {
            l.symlink_if_absent(a, &b.to);
        }
    }
    if !def.applet_links.is_empty() {
        add_dynamic(&mut l, &def.key, &inputs.applet, "/usr/local/bin/dari-applet")?;
        for a in &def.applet_links {
            l.symlink_if_absent(a, "/usr/local/bin/dari-applet");
        }
    }
    if def.busybox {
        l.file("/bin/busybox", 0o755, read(&def.key, &inputs.busybox)?);
        for a in busybox_applets(&inputs.busybox)? {
            // Real binaries copied above win over applets.
            l.symlink_if_absent(&a, "/bin/busybox");
        }
    }
    Ok(l)
}

/// Builds every image of [`catalog`] into `out_dir/KEY.tar`, printing one progress line per
/// image through `progress`, and returns the archive paths.
pub fn build_images_with(out_dir: &Path, inputs: &Inputs, progress: &mut dyn FnMut(&str)) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).map_err(|e| LabError::io("create", out_dir, e))?;
    let mut out = Vec::new();
    for def in catalog() {
        let t = std::time::Instant::now();
        let layer = rootfs(&def, inputs)?.tar()?;
        let bytes = archive(&def.names, &def.config, &layer)?;
        let path = out_dir.join(format!("{}.tar", def.key));
        std::fs::write(&path, &bytes).map_err(|e| LabError::io("write", &path, e))?;
        progress(&format!(
            "  image {:<12} {:>6.1} MB  {}  ({} ms)",
            def.key,
            bytes.len() as f64 / 1e6,
            def.names.join(", "),
            t.elapsed().as_millis()
        ));
        out.push(path);
    }
    Ok(out)
}

/// [`build_images_with`] with [`default_inputs`], progress on stderr.
pub fn build_images(out_dir: &Path) -> Result<Vec<PathBuf>> {
    let inputs = default_inputs()?;
    build_images_with(out_dir, &inputs, &mut |l| eprintln!("{l}"))
}


#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_the_cri() {
        assert_eq!(normalize("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(normalize("ubuntu:20.04"), "docker.io/library/ubuntu:20.04");
        assert_eq!(normalize("traefik/whoami"), "docker.io/traefik/whoami:latest");
        assert_eq!(normalize("registry.k8s.io/pause:3.10"), "registry.k8s.io/pause:3.10");
        assert_eq!(normalize("localhost:5000/x"), "localhost:5000/x:latest");
    }

    #[test]
    fn ldd_parsing() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(parse_ldd(out), vec!["/lib/x86_64-linux-gnu/libz.so.1", "/lib64/ld-linux-x86-64.so.2"]);
    }

    #[test]
    fn catalog_covers_the_seeds() {
        let names: Vec<String> = catalog().into_iter().flat_map(|d| d.names).collect();
        for n in ["busybox", "nginx", "traefik/whoami", "jmalloc/echo-server", "nicolaka/netshoot", "ubuntu:20.04"] {
            assert!(names.contains(&normalize(n)), "{n}");
        }
    }
}

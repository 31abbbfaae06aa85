"""Two Horovod hosts on one machine: two network namespaces joined by a veth pair, an sshd on the second.

Host 1 (`host1`, HOST1_ADDRESS) runs horovodrun and its local ranks; host 2 (`host2`,
HOST2_ADDRESS) runs an sshd through which horovodrun's own ssh launcher starts the ranks there.
Each host has its own network namespace (its loopback and one interface named INTERFACE, with an
address of TEST-NET-1, which is never routed), its own hostname (UTS namespace) and its own mount
namespace. There, /etc/hosts maps both names to their addresses (Gloo finds a rank's own address
from its hostname, see NOTES.md), and the home directory is an overlay: the real one underneath,
read only, and a layer of the test's temporary directory on top, holding the host's ~/.ssh (the
real ~/.ssh hidden). Whatever ssh, horovodrun or the ranks write into the home stays
in that layer. Directories given as `host1_only` are covered on host 2 by an empty read-only
tmpfs, as on a second machine that lacks them. `stop()` kills every process of both namespaces
and deletes them.

Needs root, `ip` (iproute2), `nsenter` and `unshare` (util-linux), overlayfs and OpenSSH's sshd, ssh and
ssh-keygen; `unavailable_reason()` says what is missing (tools/install_two_host_deps.sh installs
the packages).
"""
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import time

__all__ = ['HOST1_ADDRESS', 'HOST2_ADDRESS', 'HOST_NAMES', 'INTERFACE', 'TwoHosts', 'unavailable_reason']

HOST1_ADDRESS, HOST2_ADDRESS = '192.0.2.1', '192.0.2.2'
HOST_NAMES = ('host1', 'host2')
INTERFACE = 'twohost0'   # the same name on both hosts: horovodrun looks for interfaces common to all hosts
SSHD = '/usr/sbin/sshd'  # sshd must be started by its absolute path
NAMESPACE_RE = re.compile(r'^hvd2h-(?P<pid>\d+)-[12]$')
SSH_READY_SECONDS = 30


def _run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def unavailable_reason():
    """Why this machine can't make the two hosts, or None if it can."""
    if os.geteuid() != 0:
        return 'the two-host Horovod test needs root (network and mount namespaces)'
    missing = [tool for tool in ('ip', 'nsenter', 'unshare', 'ssh', 'ssh-keygen') if shutil.which(tool) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        return 'the two-host Horovod test needs {}; tools/install_two_host_deps.sh installs them'.format(
            ', '.join(missing))
    probe = 'hvd2h-{}-probe'.format(os.getpid())
    try:
        _run(['ip', 'netns', 'add', probe])
    except subprocess.CalledProcessError as err:
        return 'the two-host Horovod test could not create a network namespace: {}'.format(err.stdout.strip())
    subprocess.run(['ip', 'netns', 'del', probe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return None


def _namespace_pids(namespace):
    listed = subprocess.run(['ip', 'netns', 'pids', namespace], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    return [int(pid) for pid in listed.stdout.split()]


def _delete_namespace(namespace):
    for pid in _namespace_pids(namespace):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(50):   # the namespace lives on until its last process is gone
        if not _namespace_pids(namespace):
            break
        time.sleep(0.1)
    subprocess.run(['ip', 'netns', 'del', namespace], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def delete_stale_namespaces():
    """Namespaces left by a test process that was killed before its teardown."""
    listed = subprocess.run(['ip', 'netns', 'list'], stdout=subprocess.PIPE, text=True).stdout
    for name in (line.split()[0] for line in listed.splitlines() if line.strip()):
        match = NAMESPACE_RE.match(name)
        if match and not _pid_alive(int(match['pid'])):
            _delete_namespace(name)


class TwoHosts:
    """Host 1 and host 2; `start()` makes them, `stop()` removes every trace.

    Args:
        workdir: an empty directory for the keys, the home layers and sshd's files.
        host1_only: directories that exist on host 1 only.
    """

    def __init__(self, workdir, host1_only=()):
        self.workdir = workdir
        self.host1_only = list(host1_only)
        self.namespaces = ['hvd2h-{}-{}'.format(os.getpid(), host) for host in (1, 2)]
        self.home_dir = pwd.getpwuid(os.getuid()).pw_dir
        self.homes = [os.path.join(workdir, 'home{}'.format(host)) for host in (1, 2)]
        self.holder = None   # host 1's mounts live as long as this process
        self.sshd = None     # host 2's mounts: those of its sshd
        self.sshd_log = os.path.join(workdir, 'sshd.log')

    # set-up and teardown ------------------------------------------------------------------
    def start(self):
        delete_stale_namespaces()
        try:
            self._make_network()
            self._make_homes()
            self.holder = self._start_host(0, [], ['sleep', 'infinity'], subprocess.DEVNULL)
            self._start_sshd()
            self._wait_for_ssh()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for proc in (self.holder, self.sshd):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for namespace in self.namespaces:
            _delete_namespace(namespace)

    def _make_network(self):
        veth = ['h2h{}{}'.format(os.getpid(), end) for end in 'ab']   # at most 15 characters
        for namespace in self.namespaces:
            _run(['ip', 'netns', 'add', namespace])
        _run(['ip', 'link', 'add', veth[0], 'type', 'veth', 'peer', 'name', veth[1]])
        for namespace, end, address in zip(self.namespaces, veth, (HOST1_ADDRESS, HOST2_ADDRESS)):
            _run(['ip', 'link', 'set', end, 'netns', namespace])
            inside = ['ip', 'netns', 'exec', namespace, 'ip']
            _run(inside + ['link', 'set', end, 'name', INTERFACE])
            _run(inside + ['addr', 'add', address + '/24', 'dev', INTERFACE])
            _run(inside + ['link', 'set', INTERFACE, 'up'])
            _run(inside + ['link', 'set', 'lo', 'up'])

    def _make_homes(self):
        """The upper layers of the homes: host 1's ~/.ssh holds the key, host 2's authorizes it."""
        for home in self.homes:
            ssh_dir = os.path.join(home, 'upper', '.ssh')
            os.makedirs(ssh_dir, mode=0o700)
            os.makedirs(os.path.join(home, 'overlay-work'))
            os.setxattr(ssh_dir, 'trusted.overlay.opaque', b'y')   # hides the real ~/.ssh
        client_key = os.path.join(self.homes[0], 'upper', '.ssh', 'id_ed25519')
        _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'two-host test', '-f', client_key])
        shutil.copy(client_key + '.pub', os.path.join(self.homes[1], 'upper', '.ssh', 'authorized_keys'))
        self.host_key = os.path.join(self.workdir, 'ssh_host_ed25519_key')
        _run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', self.host_key])

    def _start_host(self, index, mounts, cmd, output):
        """Run `cmd` in host `index`'s namespaces after mounting its home and `mounts` (shell lines)."""
        home = self.homes[index]
        hosts_file = os.path.join(self.workdir, 'hosts')
        with open(hosts_file, 'w') as f:
            f.write('127.0.0.1 localhost\n{} {}\n{} {}\n'.format(HOST1_ADDRESS, HOST_NAMES[0],
                                                                  HOST2_ADDRESS, HOST_NAMES[1]))
        script = ['set -e', 'hostname ' + HOST_NAMES[index],
                  'mount --bind {} /etc/hosts'.format(shlex.quote(hosts_file)),
                  'mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}'.format(
            *(shlex.quote(path) for path in (self.home_dir, os.path.join(home, 'upper'),
                                             os.path.join(home, 'overlay-work'), self.home_dir)))]
        script += mounts + ['exec ' + ' '.join(shlex.quote(arg) for arg in cmd)]
        return subprocess.Popen(['ip', 'netns', 'exec', self.namespaces[index], 'unshare', '--uts', '--',
                                 'sh', '-c', '\n'.join(script)],
                                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def _start_sshd(self):
        config = os.path.join(self.workdir, 'sshd_config')
        with open(config, 'w') as f:
            f.write('\n'.join([
                'ListenAddress ' + HOST2_ADDRESS, 'Port 22', 'HostKey ' + self.host_key,
                'PidFile none', 'UsePAM no', 'PasswordAuthentication no', 'KbdInteractiveAuthentication no',
                'PubkeyAuthentication yes', 'PermitRootLogin prohibit-password',
                'AuthorizedKeysFile .ssh/authorized_keys', 'StrictModes yes', 'LogLevel VERBOSE', '']))
        # a /run of its own for sshd's privilege-separation directory; an empty read-only tmpfs over
        # each host-1-only directory (a write there fails loudly)
        mounts = ['mount -t tmpfs -o mode=755 tmpfs /run', 'mkdir /run/sshd']
        mounts += ['mount -t tmpfs -o ro,size=64k,mode=755 tmpfs ' + shlex.quote(d) for d in self.host1_only]
        with open(self.sshd_log, 'w') as log:
            self.sshd = self._start_host(1, mounts, [SSHD, '-D', '-e', '-f', config], log)

    def _wait_for_ssh(self):
        deadline = time.time() + SSH_READY_SECONDS
        while True:
            probe = subprocess.run(self.on_host1(['ssh', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no',
                                                  '-o', 'ConnectTimeout=5', HOST_NAMES[1], 'true']),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if probe.returncode == 0:
                return
            if self.sshd.poll() is not None or self.holder.poll() is not None or time.time() > deadline:
                with open(self.sshd_log) as f:
                    raise RuntimeError('ssh from host 1 to host 2 failed: {}\nsshd: {}'.format(
                        probe.stdout.strip(), f.read()[-2000:]))
            time.sleep(0.5)

    # using the hosts -----------------------------------------------------------------------
    def on_host1(self, cmd, cwd='/'):
        """`cmd` (a list) wrapped to run on host 1, in its namespaces, in `cwd`."""
        return ['nsenter', '--target', str(self.holder.pid), '--net', '--mount', '--uts', '--wd=' + cwd, '--', *cmd]

    def host2_pids(self):
        return _namespace_pids(self.namespaces[1])

    def exists_on_host2(self, path):
        """Whether `path` exists in host 2's mounts (those of its sshd and the ranks it starts)."""
        test = subprocess.run(['nsenter', '--target', str(self.sshd.pid), '--mount', '--', 'test', '-e', path])
        return test.returncode == 0

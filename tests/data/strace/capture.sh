#!/bin/sh
# How the strace logs in this directory were recorded (strace 6.1, Python 3.11, as root), from
# a scratch directory (the -y paths below name it: /tmp/rec).
#   threads_yy.log   strace -f -tt -T -yy -e trace=... -o   a thread reading a socketpair, TCP
#                    loopback, a pipe, /dev/null, a fsync'd file, epoll, a fork
#   stderr_mixed.txt strace -f -T --absolute-timestamps=format:unix,precision:ns, no -o: strace's
#                    stderr mixed with the program's own; SIGUSR1 (ERESTARTSYS), a SIGKILLed
#                    child, then exec of sleep, SIGSTOP+SIGCONT from outside (restart_syscall)
#   attach.log       strace -f -tt -T -y -o ... -p PID of a process with 2 threads blocked in
#                    reads, detached by SIGINT after ~0.45 s (<detached ...>, calls left pending)
set -e
cd /tmp/rec
cat > threads_net.py <<'PY'
import os, select, socket, threading, time
a, b = socket.socketpair()
def reader():
    for n in (10, 11, 12):
        assert len(b.recv(n)) == n
t = threading.Thread(target=reader)
t.start()
for n in (10, 11, 12):
    a.send(b"x" * n)
    time.sleep(0.01)
t.join()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
cli = socket.create_connection(srv.getsockname())
conn, _ = srv.accept()
cli.sendall(b"hello")
assert conn.recv(5) == b"hello"
r, w = os.pipe()
os.write(w, b"ab")
os.read(r, 2)
with open("/dev/null", "w") as f:
    f.write("x")
fd = os.open("data.bin", os.O_CREAT | os.O_WRONLY, 0o644)
os.write(fd, b"y" * 100)
os.fsync(fd)
os.close(fd)
ep = select.epoll()
ep.register(r, select.EPOLLIN)
os.write(w, b"z")
ep.poll(0.1)
pid = os.fork()
if pid == 0:
    os.write(w, b"c")
    os._exit(3)
os.waitpid(pid, 0)
PY
strace -f -tt -T -yy -o threads_yy.log -e trace=read,write,recvfrom,sendto,socketpair,socket,connect,accept4,pipe2,clone,clone3,openat,close,fsync,epoll_create1,epoll_ctl,epoll_wait,exit,exit_group,wait4 \
    /usr/bin/python3 -S threads_net.py </dev/null >/dev/null 2>&1

cat > signals.py <<'PY'
import os, signal, sys, threading, time
signal.signal(signal.SIGUSR1, lambda *a: None)
r, w = os.pipe()
def poker():
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.05)
    os.write(w, b"q")
t = threading.Thread(target=poker)
t.start()
os.read(r, 1)
t.join()
os.write(2, b"program says hello\n")
sys.stderr.write("two lines\nof output\n"); sys.stderr.flush()
pid = os.fork()
if pid == 0:
    time.sleep(10)
    os._exit(0)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
open("pid.txt", "w").write(str(os.getpid()))
os.execv("/bin/sleep", ["sleep", "0.6"])   # SIGSTOP + SIGCONT from outside: restart_syscall
PY
rm -f pid.txt
strace -f -T --absolute-timestamps=format:unix,precision:ns \
    -e trace=read,write,kill,clone,clone3,wait4,clock_nanosleep,nanosleep,restart_syscall,execve,exit,exit_group \
    /usr/bin/python3 -S signals.py 2>stderr_mixed.txt </dev/null &
while [ ! -s pid.txt ]; do sleep 0.05; done
sleep 0.2; kill -STOP "$(cat pid.txt)"; sleep 0.1; kill -CONT "$(cat pid.txt)"; wait

cat > attach_target.py <<'PY'
import os, socket, threading, time
a, b = socket.socketpair()
r, w = os.pipe()
def sock_reader():
    while True:
        if not b.recv(100):
            return
def pipe_reader():
    while os.read(r, 100):
        pass
for f in (sock_reader, pipe_reader):
    threading.Thread(target=f, daemon=True).start()
open("target.pid", "w").write(str(os.getpid()))
while True:
    a.send(b"ping")
    os.write(w, b"pong!")
    time.sleep(0.1)
PY
rm -f target.pid
/usr/bin/python3 -S attach_target.py & TP=$!
while [ ! -s target.pid ]; do sleep 0.05; done
strace -f -tt -T -y -o attach.log -p "$TP" & SP=$!
sleep 0.45; kill -INT $SP; wait $SP || true; kill $TP

package pamenv

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestSplit(t *testing.T) {
	got := Split([]byte("A=1\x00PAM_USER=bob\x00noequals\x00=x\x00PAM_USER=alice\x00B=\x00"))
	want := []string{"A=1", "PAM_USER=bob", "PAM_USER=alice", "B="}
	if !slices.Equal(got, want) {
		t.Fatalf("Split = %q, want %q", got, want)
	}
}

// The block pam_exec builds when a user's ~/.pam_environment names
// PAM_USER: the user's copy comes first. Neither copy is taken.
func TestLaunchRefusesDuplicates(t *testing.T) {
	for _, name := range []string{User, Type, Service} {
		env := []string{name + "=forged\nline", "PAM_USER=alice", "PAM_TYPE=open_session", "PAM_SERVICE=sshd"}
		_, err := Launch(env)
		var dup *DuplicateError
		if !errors.As(err, &dup) || dup.Name != name {
			t.Fatalf("%s twice: %v", name, err)
		}
		if msg := err.Error(); !strings.Contains(msg, name+" appears 2 times") || !strings.Contains(msg, `"forged\nline"`) || strings.Contains(msg, "\n") {
			t.Errorf("the error does not say what happened on one line: %q", msg)
		}
	}
}

func TestLaunch(t *testing.T) {
	env := []string{
		"LD_PRELOAD=/home/alice/evil.so", "LD_LIBRARY_PATH=/tmp", "GCONV_PATH=/tmp", "LOCPATH=/tmp",
		"TOKEND_PAM_LAUNCHER=0", "TOKEND_USERENV_LD_PRELOAD=/x.so", "PATH=/home/alice/bin",
		"CONDOR_CONFIG=/first", "CONDOR_CONFIG=/home/alice/condor_config", "_CONDOR_SEC_TOKEN_DIRECTORY=/d",
		"_CONDOR_=empty", "_CONDOR_X\nY=odd", "LANG=C.UTF-8", "TZ=Europe/Paris",
		"PAM_USER=alice", "PAM_TYPE=open_session", "PAM_SERVICE=sshd", "PAM_RHOST=example.org",
	}
	got, err := Launch(env)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"PATH=" + Path, "TOKEND_PAM_LAUNCHER=1",
		"PAM_USER=alice", "PAM_TYPE=open_session", "PAM_SERVICE=sshd",
		"TOKEND_USERENV_CONDOR_CONFIG=/home/alice/condor_config", "TOKEND_USERENV_LANG=C.UTF-8",
		"TOKEND_USERENV_TZ=Europe/Paris", "TOKEND_USERENV__CONDOR_SEC_TOKEN_DIRECTORY=/d",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Launch =\n%q\nwant\n%q", got, want)
	}
	// Back on the user's side: only what the launcher carried, under its
	// own name.
	carried := Carried(append(got, "TOKEND_USERENV_LD_PRELOAD=/x.so", "CONDOR_CONFIG=/not/carried"))
	wantCarried := []string{"CONDOR_CONFIG=/home/alice/condor_config", "LANG=C.UTF-8", "TZ=Europe/Paris", "_CONDOR_SEC_TOKEN_DIRECTORY=/d"}
	if !slices.Equal(carried, wantCarried) {
		t.Fatalf("Carried =\n%q\nwant\n%q", carried, wantCarried)
	}
}

func TestGet(t *testing.T) {
	env := []string{"PAM_USERX=no", "PAM_USER=alice", "EMPTY="}
	for name, want := range map[string]string{User: "alice", "EMPTY": "", "MISSING": "", "PAM_USERX": "no"} {
		if got, err := Get(env, name); got != want || err != nil {
			t.Errorf("Get(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
}

package iotkv_test

import (
	"errors"
	"testing"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
)

// One decoder for every untrusted document: trailing data and unknown
// fields are refused by each of its users alike.
func TestDecodeStrictRefusesTrailingDataEverywhere(t *testing.T) {
	var c iotkv.BackupConfirm
	if err := iotkv.DecodeStrict([]byte(" {\"inc\":\"a\",\"seq\":2}\r\n\t "), &c); err != nil || c.Seq != 2 {
		t.Fatalf("DecodeStrict of a document in whitespace = %+v, %v", c, err)
	}
	for _, tail := range []string{"]", "}", " {}", "\v", "x", " 1"} {
		if err := iotkv.DecodeStrict([]byte(`{"inc":"a"}`+tail), &c); !errors.Is(err, iotkv.ErrTrailingData) {
			t.Errorf("backup confirm + %q: %v, want ErrTrailingData", tail, err)
		}
		if _, err := (iotkv.Limits{}).DecodeBatch([]byte(`{"seq":1,"ops":[{"op":"del","key":"k"}]}` + tail)); iotkv.CodeOf(err) != iotkv.CodeInvalidJSON {
			t.Errorf("batch + %q: %v, want %s", tail, err, iotkv.CodeInvalidJSON)
		}
		if _, err := accounts.Parse([]byte(`{"version":1,"accounts":[]}` + tail)); !errors.Is(err, iotkv.ErrTrailingData) {
			t.Errorf("accounts file + %q: %v, want ErrTrailingData", tail, err)
		}
	}
	if err := iotkv.DecodeStrict([]byte(`{"inc":"a","extra":1}`), &c); err == nil {
		t.Error("DecodeStrict accepted a field the type does not declare")
	}
}

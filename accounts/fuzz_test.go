package accounts_test

import (
	"encoding/json"
	"testing"

	"github.com/iotkv/iotkv"
	"github.com/iotkv/iotkv/accounts"
)

// A real bcrypt hash (cost 10) so seeds reach the checks after the hash.
const fuzzHash = "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"

// FuzzParse: the accounts file is edited by people and scripts. Parse must
// never panic, and what it accepts must hold only valid, unique names,
// known roles and bcrypt hashes, and survive a round trip.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"accounts":[{"name":"dev-1","role":"device","hash":"` + fuzzHash + `"}]}`,
		`{"version":1,"accounts":[{"name":"a","role":"admin","hash":"` + fuzzHash + `"},{"name":"a","role":"reader","hash":"` + fuzzHash + `"}]}`,
		`{"version":1,"accounts":[{"name":"../x","role":"device","hash":"` + fuzzHash + `"}]}`,
		`{"version":1,"accounts":[{"name":"x","role":"root","hash":"` + fuzzHash + `"}]}`,
		`{"version":1,"accounts":[{"name":"x","role":"device","hash":"plaintext"}]}`,
		`{"version":1,"accounts":[{"name":"x","role":"device","hash":"$2a$99$xx"}]}`,
		`{"version":1,"accounts":[{"name":"x","role":"device","hash":"` + fuzzHash + `","password":"p"}]}`,
		`{"version":1,"accounts":null}`, `{}`, `[]`, `null`, ``, `{"version":1} {}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		af, err := accounts.Parse(data)
		if err != nil {
			if af != nil {
				t.Fatal("Parse returned a file with an error")
			}
			return
		}
		seen := map[string]bool{}
		for _, a := range af.Accounts {
			if iotkv.ValidateName(a.Name) != nil || !a.Role.Valid() || seen[a.Name] {
				t.Fatalf("accepted account %+v", a)
			}
			if len(a.Hash) < 4 || a.Hash[0] != '$' {
				t.Fatalf("accepted a hash that is not bcrypt: %q", a.Hash)
			}
			seen[a.Name] = true
		}
		again, err := json.Marshal(af)
		if err != nil {
			t.Fatal(err)
		}
		af2, err := accounts.Parse(again)
		if err != nil || len(af2.Accounts) != len(af.Accounts) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

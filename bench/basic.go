package bench

import "encoding/base64"

func basic(name string) string {
	return base64.StdEncoding.EncodeToString([]byte(name + ":" + Password(name)))
}

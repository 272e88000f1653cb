package cliutil

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts the name of the environment variable read for a flag.
const EnvPrefix = "IOTKV_"

// maxConfigBytes bounds a configuration file.
const maxConfigBytes = 1 << 20

// ErrConfigPrinted is what ParseConfig returns after --print-config wrote
// the configuration: the command stops there and Exit reports success.
var ErrConfigPrinted = errors.New("configuration printed")

// EnvName is the environment variable read for flag name: IOTKV_, then
// the name in upper case with '-' as '_' (http-addr: IOTKV_HTTP_ADDR).
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Sources of a flag's value, as --print-config names them.
const (
	srcFlag    = "flag"
	srcDefault = "default"
)

// ParseConfig is Parse for the commands that also take their flags from
// a YAML file and from the environment. It adds two flags to fs:
// --config FILE (a YAML mapping of flag names to values, keys spelled as
// the flags) and --print-config (write the effective configuration to
// stdout, secrets masked, and return ErrConfigPrinted).
//
// Every flag of fs is read, in this order of precedence: the command
// line, then the environment variable EnvName(flag), then the file, then
// the flag's default. An unknown key, a key given twice or a bad value in
// the file is a UsageError naming the file, the line and the key; a bad
// value in the environment is one naming the variable. Environment
// variables that name no flag are left alone (IOTKV_PASSWORD is read by
// ReadPassword). A list may be written as a YAML sequence: it is passed
// to the flag joined with commas.
func ParseConfig(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	pos, _, err := ParseConfigCommandLine(fs, args, stdout)
	return pos, err
}

// ParseConfigCommandLine is ParseConfig that also returns the names of
// the flags given on the command line (not by the environment or the
// file): for a refusal that a configuration shared by several
// subcommands must not trigger.
func ParseConfigCommandLine(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, map[string]bool, error) {
	file := fs.String("config", "", "YAML file of flag values, keys spelled as the flags; also IOTKV_<FLAG> variables (flag > environment > file > default)")
	printCfg := fs.Bool("print-config", false, "print the effective configuration (secrets masked) and exit")
	pos, err := Parse(fs, args)
	if err != nil {
		return nil, nil, err
	}
	src := map[string]string{}
	cli := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { src[f.Name], cli[f.Name] = srcFlag, true })
	if err := applyEnv(fs, src); err != nil {
		return nil, nil, err
	}
	if *file != "" {
		if err := applyFile(fs, *file, src); err != nil {
			return nil, nil, err
		}
	}
	if *printCfg {
		if err := printConfig(stdout, fs, src, *file); err != nil {
			return nil, nil, err
		}
		return nil, nil, ErrConfigPrinted
	}
	return pos, cli, nil
}

// layerOnly are ParseConfig's own flags: never read from a file, and
// --print-config not from the environment either.
func layerOnly(name string) bool { return name == "config" || name == "print-config" }

func applyEnv(fs *flag.FlagSet, src map[string]string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || src[f.Name] != "" || f.Name == "print-config" {
			return
		}
		env := EnvName(f.Name)
		v, ok := os.LookupEnv(env)
		if !ok {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = Usagef("%s: environment %s: invalid value %q for --%s: %v", fs.Name(), env, v, f.Name, serr)
			return
		}
		src[f.Name] = "env " + env
	})
	return err
}

func applyFile(fs *flag.FlagSet, file string, src map[string]string) error {
	data, err := readLimited(file)
	if err != nil {
		return Usagef("%s: config %s: %v", fs.Name(), file, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return Usagef("%s: config %s: %v", fs.Name(), file, err)
	}
	if doc.Kind == 0 { // empty or only comments
		return nil
	}
	m := doc.Content[0]
	if m.Kind != yaml.MappingNode {
		return Usagef("%s: config %s line %d: want a mapping of flag names to values", fs.Name(), file, m.Line)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		name := k.Value
		bad := func(format string, args ...any) error {
			return Usagef("%s: config %s line %d: %s: %s", fs.Name(), file, k.Line, name, fmt.Sprintf(format, args...))
		}
		if fs.Lookup(name) == nil || layerOnly(name) {
			return bad("unknown key (keys are the flag names of '%s --help')", fs.Name())
		}
		if seen[name] {
			return bad("given twice")
		}
		seen[name] = true
		val, err := scalarValue(v)
		if err != nil {
			return bad("%v", err)
		}
		if src[name] != "" { // the command line or the environment wins
			continue
		}
		if err := fs.Set(name, val); err != nil {
			return bad("invalid value %q: %v", val, err)
		}
		src[name] = "file"
	}
	return nil
}

func readLimited(file string) ([]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxConfigBytes)
	}
	return data, nil
}

// scalarValue is the flag text of a YAML value: a scalar as written, a
// sequence of scalars joined with commas.
func scalarValue(v *yaml.Node) (string, error) {
	if v.Kind == yaml.AliasNode {
		v = v.Alias
	}
	switch v.Kind {
	case yaml.ScalarNode:
		if v.Tag == "!!null" {
			return "", errors.New("no value (write '' for an empty one)")
		}
		return v.Value, nil
	case yaml.SequenceNode:
		parts := make([]string, 0, len(v.Content))
		for _, e := range v.Content {
			if e.Kind == yaml.AliasNode {
				e = e.Alias
			}
			if e.Kind != yaml.ScalarNode || e.Tag == "!!null" {
				return "", errors.New("a list holds plain values only")
			}
			parts = append(parts, e.Value)
		}
		return strings.Join(parts, ","), nil
	}
	return "", errors.New("want a value or a list of values, not a mapping")
}

// secret reports whether a flag holds a secret itself (not a file name).
func secret(name string) bool {
	if strings.HasSuffix(name, "-file") {
		return false
	}
	for _, s := range []string{"password", "secret", "token"} {
		if strings.Contains(name, s) {
			return true
		}
	}
	return false
}

// printConfig writes every flag's effective value as a YAML file that
// --config reads back, each with where the value came from.
func printConfig(w io.Writer, fs *flag.FlagSet, src map[string]string, file string) error {
	m := &yaml.Node{Kind: yaml.MappingNode}
	m.HeadComment = fmt.Sprintf("iotkv %s: effective configuration (flag > %s<FLAG> environment > --config file > default)", fs.Name(), EnvPrefix)
	if file != "" {
		m.HeadComment += "\nfile: " + file
	}
	fs.VisitAll(func(f *flag.Flag) {
		if layerOnly(f.Name) {
			return
		}
		val := f.Value.String()
		if secret(f.Name) && val != "" {
			val = "***"
		}
		from := src[f.Name]
		if from == "" {
			from = srcDefault
		}
		k := &yaml.Node{Kind: yaml.ScalarNode, Value: f.Name}
		v := &yaml.Node{Kind: yaml.ScalarNode, Value: val, LineComment: from}
		if val == "" {
			v.Style = yaml.DoubleQuotedStyle // not a null
		}
		m.Content = append(m.Content, k, v)
	})
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{m}}); err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	return enc.Close()
}
